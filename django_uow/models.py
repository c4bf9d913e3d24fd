"""Models: the outbox and inbox tables, and the abstract versioned/aggregate mixins."""

from __future__ import annotations

import datetime
from typing import Any, ClassVar

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, models, router, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .context import ActiveUnit, current_uow, open_units, uow_guarding_write
from .events.base import (
    AGGREGATE_ID_MAX_LENGTH,
    EVENT_TYPE_MAX_LENGTH,
    DomainEvent,
    Envelope,
    StagedEvent,
    check_aggregate_id,
)
from .locking.fields import VersionField, get_version, version_field_of
from .locking.writes import conflict_error, versioned_delete_guard, versioned_update


class OutboxStatus(models.TextChoices):
    PENDING = "pending", _("pending")
    DISPATCHED = "dispatched", _("dispatched")
    FAILED = "failed", _("failed")
    #: Given up on by an operator: kept for audit, never relayed, blocks nothing.
    DISCARDED = "discarded", _("discarded")


#: Outbox statuses still owed to consumers: the relay delivers them, in aggregate order.
OWED_STATUSES = (OutboxStatus.PENDING, OutboxStatus.FAILED)


class OutboxEvent(models.Model):
    """One domain event, written in the business transaction and relayed after commit.

    ``id`` is the global order of insertion. Events of one aggregate are relayed in
    ``(aggregate_version, id)`` order; an event waits while an earlier event of its
    aggregate is owed (pending or failed). ``dispatched`` and ``discarded`` are final.
    """

    Status = OutboxStatus

    id = models.BigAutoField(primary_key=True)
    event_id = models.UUIDField(unique=True, editable=False)
    event_type = models.CharField(max_length=EVENT_TYPE_MAX_LENGTH)
    aggregate_type = models.CharField(max_length=255, blank=True, default="")
    aggregate_id = models.CharField(max_length=AGGREGATE_ID_MAX_LENGTH, blank=True, default="")
    aggregate_version = models.PositiveBigIntegerField(null=True, blank=True)
    occurred_at = models.DateTimeField(default=timezone.now)
    payload = models.JSONField(encoder=DjangoJSONEncoder, default=dict)
    headers = models.JSONField(encoder=DjangoJSONEncoder, default=dict)
    status = models.CharField(
        max_length=16, choices=OutboxStatus.choices, default=OutboxStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    available_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # The lease of the relay that claimed the row; an expired lease can be claimed again.
    claimed_by = models.CharField(max_length=64, blank=True, default="")
    claimed_until = models.DateTimeField(null=True, blank=True)
    # When an operator discarded the dead letter (retention counts from here).
    discarded_at = models.DateTimeField(null=True, blank=True)
    # A scheduled event's due time (``record_event(delay=/deliver_at=)``); NULL for an
    # event due at commit. ``available_at`` starts there and moves with retries; this
    # stays, because per-aggregate order among due events is by due time.
    deliver_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("outbox event")
        verbose_name_plural = _("outbox events")
        indexes = [
            # Claiming the next due batch touches only pending rows, however many
            # dispatched rows the table holds (partial where the database supports it).
            models.Index(
                fields=["available_at", "id"],
                name="uow_outbox_due_idx",
                condition=Q(status="pending"),
            ),
            # "Is an earlier event of this aggregate still owed?" (pending or failed:
            # dispatched and discarded events hold nothing back).
            models.Index(
                fields=["aggregate_type", "aggregate_id", "id"],
                name="uow_outbox_owed_idx",
                condition=Q(status__in=["pending", "failed"]),
            ),
            # Retention pruning walks dispatched rows by age.
            models.Index(
                fields=["dispatched_at"],
                name="uow_outbox_prune_idx",
                condition=Q(status="dispatched"),
            ),
            # ... and discarded rows by the time they were discarded.
            models.Index(
                fields=["discarded_at"],
                name="uow_outbox_discard_idx",
                condition=Q(status="discarded"),
            ),
            models.Index(fields=["aggregate_type", "aggregate_id"], name="uow_outbox_agg_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} ({self.status})"

    def to_envelope(self) -> Envelope:
        return Envelope.of_row(self)


class DeliveryStatus(models.TextChoices):
    """Where one (event, handler) delivery stands.

    - ``published``: handed to the broker (Celery), not handled yet; published again
      when still not handled ``HANDLER_DEADLINE`` after ``due_at``.
    - ``retrying``: the handler raised; it runs again (the relay's or Celery's retry).
    - ``succeeded``: the handler had its effect (``processed_at`` says when); a
      redelivery of an idempotent handler is skipped.
    - ``failed``: the handler failed for good (``MAX_ATTEMPTS``, or ``PermanentFailure``):
      a dead letter, kept until it is redelivered.
    - ``discarded``: a dead letter an operator gave up on; kept for audit, not counted
      as failed, and still re-runnable with ``redeliver``.
    - ``blocked``: an ordered handler's delivery that waited ``ORDERED_WAIT`` for the
      previous event of its aggregate (for that handler) to succeed; it runs when that
      one succeeds (``last_error`` names it).
    """

    PUBLISHED = "published", _("published")
    RETRYING = "retrying", _("retrying")
    SUCCEEDED = "succeeded", _("succeeded")
    FAILED = "failed", _("failed")
    DISCARDED = "discarded", _("discarded")
    BLOCKED = "blocked", _("blocked")


#: Deliveries still owed by a consumer: the deadline sweep republishes them.
OWED_DELIVERY_STATUSES = (DeliveryStatus.PUBLISHED, DeliveryStatus.RETRYING)


class ProcessedEvent(models.Model):
    """The inbox: one row per (event, handler) delivery, whatever its outcome.

    Every handler has a row once it was published (Celery) or ran (inline): its status,
    attempts, last error and traceback, and times. Idempotency rests on the unique
    ``(event_id, handler)``: an idempotent handler turns its row into ``succeeded`` in
    its own transaction, so a redelivery finds it and is skipped. ``processed_at`` is
    the time of success (``None`` until then), as it has always been.
    """

    Status = DeliveryStatus

    event_id = models.UUIDField()
    handler = models.CharField(max_length=255)
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.SUCCEEDED
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    # Copied from the envelope, for filters and for the admin's lists.
    event_type = models.CharField(max_length=255, blank=True, default="")
    aggregate_type = models.CharField(max_length=255, blank=True, default="")
    aggregate_id = models.CharField(max_length=255, blank=True, default="")
    # The first publish: consumer lag counts from here (a republished copy does not reset it).
    published_at = models.DateTimeField(null=True, blank=True)
    # How many times the delivery was handed to the broker (the first publish included).
    publishes = models.PositiveIntegerField(default=0)
    # When the next run is due: the publish time, or the time of a scheduled retry. The
    # deadline sweep republishes owed rows whose due_at is older than HANDLER_DEADLINE.
    due_at = models.DateTimeField(null=True, blank=True)
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    # Succeeded at (the column's meaning since the first release).
    processed_at = models.DateTimeField(default=timezone.now, null=True, blank=True)

    class Meta:
        verbose_name = _("handler delivery")
        verbose_name_plural = _("handler deliveries")
        constraints = [
            models.UniqueConstraint(fields=["event_id", "handler"], name="uow_processed_once")
        ]
        indexes = [
            # Dead letters, newest first (the admin's list, outbox_status, redeliver --failed).
            models.Index(
                fields=["last_attempt_at"],
                name="uow_inbox_failed_idx",
                condition=Q(status="failed"),
            ),
            # Owed deliveries by due time: the deadline sweep and the consumer lag.
            models.Index(
                fields=["due_at"],
                name="uow_inbox_owed_idx",
                condition=Q(status__in=["published", "retrying"]),
            ),
            # An ordered handler's blocked deliveries of one aggregate, woken in order.
            models.Index(
                fields=["handler", "aggregate_type", "aggregate_id"],
                name="uow_inbox_blocked_idx",
                condition=Q(status="blocked"),
            ),
            # Retention walks succeeded rows by age.
            models.Index(
                fields=["processed_at"],
                name="uow_inbox_prune_idx",
                condition=Q(status="succeeded"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.handler} <- {self.event_id} ({self.status})"

    @property
    def owed(self) -> bool:
        return self.status in OWED_DELIVERY_STATUSES


class VersionedQuerySet(models.QuerySet[Any]):
    def update_versioned(self, **kwargs: Any) -> int:
        """``update()`` that also bumps ``version``, so in-memory copies become stale."""
        field = version_field_of(self.model)
        if field.name in kwargs or field.attname in kwargs:
            raise TypeError(
                f"update_versioned({field.name}=...) on {self.model._meta.label}: the version "
                f"is incremented for you. Drop {field.name}=, or use update() to set it."
            )
        return self.update(**{field.attname: F(field.attname) + 1}, **kwargs)


class VersionedModel(models.Model):
    """Abstract model with optimistic locking on its ``VersionField`` (``version``).

    ``save()`` of an existing row is one ``UPDATE ... WHERE pk = %s AND version = %s``
    that also increments the version; zero rows raises ``ConcurrencyError`` and writes
    nothing. A new instance (``_state.adding``) is always INSERTed, never written over a
    row it has not read: an existing pk raises ``IntegrityError``. ``delete()`` is
    checked like a save. Fixture loading (``raw`` saves) stores the version it is given.
    A ``save(update_fields=...)`` that touches only fields listed in
    ``version_exempt_fields`` (bookkeeping such as ``last_seen``) neither checks nor
    bumps the version. To keep the version under another name, write ``version = None``
    and declare ``version_number = VersionField()``.
    """

    version = VersionField()

    version_exempt_fields: ClassVar[frozenset[str]] = frozenset()

    objects = VersionedQuerySet.as_manager()

    class Meta:
        abstract = True

    def _uow_alias(self, using: str | None = None) -> str:
        return using or self._state.db or router.db_for_write(type(self), instance=self)

    def _uow_remember(self, using: str | None) -> None:
        """Let an open unit of work restore this object if its savepoint rolls back."""
        if open_units():
            unit: ActiveUnit | None = current_uow(self._uow_alias(using))
            if unit is not None:
                unit._remember(self)

    def save(self, *args: Any, **kwargs: Any) -> None:  # noqa: DJ012 - beside its helpers
        update_fields = kwargs.get("update_fields")
        self._uow_skip_version = bool(
            update_fields is not None
            and self.version_exempt_fields
            and set(update_fields) <= set(self.version_exempt_fields)
        )
        self._uow_remember(kwargs.get("using"))
        super().save(*args, **kwargs)

    def _save_table(self, raw: bool = False, *args: Any, **kwargs: Any) -> Any:
        self._uow_raw = raw
        return super()._save_table(raw, *args, **kwargs)  # type: ignore[misc]

    def _do_update(  # type: ignore[override]
        self,
        base_qs: models.QuerySet[Any],
        using: str,
        pk_val: Any,
        values: list[Any],
        update_fields: Any,
        forced_update: Any,
        *args: Any,
        **kwargs: Any,
    ) -> bool:
        version_field = version_field_of(self)
        if (
            getattr(self, "_uow_raw", False)
            or getattr(self, "_uow_skip_version", False)
            or version_field not in base_qs.model._meta.local_concrete_fields
        ):
            return super()._do_update(  # type: ignore[return-value]
                base_qs, using, pk_val, values, update_fields, forced_update, *args, **kwargs
            )
        if self._state.adding and not forced_update:
            # Never loaded, so never read: INSERT it, whatever pk it was given. Updating
            # a row with that pk would overwrite data nobody looked at (a lost update).
            return False
        if versioned_update(self, base_qs, pk_val, values):
            return True
        raise conflict_error(self, using, get_version(self), "save")

    def _do_insert(
        self, manager: Any, using: str, fields: Any, returning_fields: Any, raw: bool
    ) -> Any:
        pk = self.pk
        try:
            return super()._do_insert(  # type: ignore[misc]
                manager, using, fields, returning_fields, raw
            )
        except IntegrityError as error:
            if raw or pk is None:
                raise
            label = self._meta.label
            raise IntegrityError(
                f"Cannot insert {label} pk={pk!r}: a row with this pk probably already "
                f"exists. A new {label} (not loaded from the database) is always inserted, "
                "never written over a row it has not read; load the row and change it "
                f"instead. Database error: {error}"
            ) from error

    def delete(
        self, using: str | None = None, keep_parents: bool = False
    ) -> tuple[int, dict[str, int]]:
        using = self._uow_alias(using)
        self._uow_remember(using)
        with transaction.atomic(using=using, savepoint=False):
            versioned_delete_guard(self, using)
            return super().delete(using=using, keep_parents=keep_parents)


class AggregateRoot(VersionedModel):
    """Abstract aggregate: a versioned model that records domain events.

    Events wait in ``pending_events`` until the active unit of work writes them to the
    outbox at commit. Saving an aggregate with pending events outside a unit of work
    raises ``NoActiveUnitOfWork``: events are never silently dropped.
    """

    class Meta:
        abstract = True

    @property
    def _uow_staged(self) -> list[StagedEvent]:
        try:
            existing: list[StagedEvent] = self.__dict__["_uow_staged_events"]
            return existing
        except KeyError:
            staged: list[StagedEvent] = []
            self.__dict__["_uow_staged_events"] = staged
            return staged

    @property
    def pending_events(self) -> list[DomainEvent]:
        """Events recorded and not yet written to the outbox, oldest first."""
        return [staged.event for staged in self._uow_staged]

    def record_event(
        self,
        event: DomainEvent,
        *,
        delay: datetime.timedelta | float | None = None,
        deliver_at: datetime.datetime | None = None,
    ) -> None:
        """Record ``event``; it is written to the outbox when the unit of work commits.

        ``delay`` (a ``timedelta`` or seconds) or ``deliver_at`` (an aware datetime)
        schedules it: the relay does not deliver it before then, and it holds back no
        event of this aggregate that is due earlier. Raises ``EventSerializationError``
        now, naming the field, if the event cannot be stored as JSON, and ``TypeError``
        or ``ValueError`` for a bad schedule; nothing is recorded then.
        """
        staged = StagedEvent.from_event(event, delay=delay, deliver_at=deliver_at)
        if self.pk is not None:  # else checked when the unit writes it, once it has one
            check_aggregate_id(staged.event_type, self.pk)
        uow: ActiveUnit | None = current_uow(self._uow_alias())
        if uow is not None:
            uow._remember(self)
        self._uow_staged.append(staged)
        self.__dict__["_uow_unsaved_events"] = True
        if uow is not None:
            uow._track_event(self, staged)

    def _uow_before_write(self, using: str | None, operation: str) -> ActiveUnit | None:
        return uow_guarding_write(self, using or self._uow_alias(), operation)

    def save(self, *args: Any, **kwargs: Any) -> None:  # noqa: DJ012 - beside its helpers
        uow = self._uow_before_write(kwargs.get("using"), "save")
        super().save(*args, **kwargs)
        self.__dict__["_uow_unsaved_events"] = False
        if uow is not None:
            uow._track_written(self)

    def delete(
        self, using: str | None = None, keep_parents: bool = False
    ) -> tuple[int, dict[str, int]]:
        uow = self._uow_before_write(using, "delete")
        pk = self.pk
        result = super().delete(using=using, keep_parents=keep_parents)
        self.__dict__["_uow_unsaved_events"] = False
        self.__dict__["_uow_deleted_pk"] = pk
        if uow is not None:
            uow._track_written(self)
        return result
