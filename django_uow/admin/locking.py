"""Optimistic locking in the Django admin for ``VersionedModel`` subclasses.

``VersionedModelAdmin`` (or ``VersionedAdminMixin`` before another ``ModelAdmin``)
carries the version through the change form as a hidden field. A stale submission
gets a form error instead of overwriting someone else's change. Changelist actions
post the version of every row next to its checkbox; an action on a selection that
changed since the list was loaded is refused, and ``delete_selected`` deletes each
object with a version-checked ``delete()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import models, router, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from ..exceptions import ConcurrencyError
from ..locking.fields import version_field_of
from ..models import VersionedModel

if TYPE_CHECKING:
    _AdminBase = admin.ModelAdmin[Any]
else:
    _AdminBase = object

__all__ = ["VERSION_POST_PREFIX", "VersionedAdminMixin", "VersionedModelAdmin"]

#: Changelist rows post their version as ``<prefix><pk>`` beside the action checkbox.
VERSION_POST_PREFIX = "_uow_version_"

CONFLICT_MESSAGE = (
    "This {verbose_name} was changed by someone else since you opened it "
    "(version {expected}, now {current}). Reload to see their changes."
)
MISSING_MESSAGE = (
    "This form did not send a valid version of the {verbose_name}, so your change cannot be "
    "checked against other people's changes. Reload the page and apply your change again."
)


def conflict_message(verbose_name: Any, expected: Any, current: Any) -> str:
    """The form error for a stale change form."""
    return _(CONFLICT_MESSAGE).format(verbose_name=verbose_name, expected=expected, current=current)


class VersionCheckedForm(forms.ModelForm):  # type: ignore[type-arg]
    """Mixed into the admin's change form: the posted version must still be current.

    ``self.instance`` was loaded by this very request, so its ``version`` is the
    current one and the check costs no query. The save itself stays a version-checked
    ``UPDATE``, which catches a writer slipping in between this check and the save.
    """

    #: Set by the admin when a save raced and is re-validated (see ``changeform_view``).
    uow_conflict: ConcurrencyError | None = None

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        verbose_name = self.instance._meta.verbose_name
        field = version_field_of(self.instance)
        submitted = cleaned.get(field.name)
        current = getattr(self.instance, field.attname)
        if submitted is None:
            raise ValidationError(
                _(MISSING_MESSAGE).format(verbose_name=verbose_name), code="version_missing"
            )
        if submitted != current:
            raise ValidationError(
                conflict_message(verbose_name, submitted, current), code="version_conflict"
            )
        conflict = type(self).uow_conflict
        if conflict is not None:
            # The versions match now, so another object of this form (an inline) conflicted.
            raise ValidationError(str(conflict), code="version_conflict")
        return cleaned


class VersionedAdminMixin(_AdminBase):
    """Optimistic locking for a ``ModelAdmin`` of a ``VersionedModel``.

    Put it before ``admin.ModelAdmin`` in the bases (or use ``VersionedModelAdmin``).
    The model's version field (``version``, or whatever ``VersionField`` it declares) is
    added to the change form as a hidden input (whatever ``fields``/``fieldsets`` say)
    and left out of the add form.
    """

    def __init__(self, model: type[models.Model], admin_site: Any) -> None:

        if not issubclass(model, VersionedModel):
            raise ImproperlyConfigured(
                f"{type(self).__name__} is registered for {model._meta.label}, which is not a "
                "VersionedModel, so it has no version to check. Make the model inherit "
                "django_uow.VersionedModel (or AggregateRoot), or use a plain ModelAdmin."
            )
        super().__init__(model, admin_site)
        self.version_field_name: str = version_field_of(model).name

    def get_fieldsets(self, request: HttpRequest, obj: models.Model | None = None) -> Any:
        fieldsets = list(super().get_fieldsets(request, obj))
        carry = obj is not None and self.has_change_permission(request, obj)
        version = self.version_field_name
        present = version in flatten_fieldsets(fieldsets)
        if carry and not present and fieldsets:
            name, options = fieldsets[0]
            fieldsets[0] = (name, {**options, "fields": [*options["fields"], version]})
        elif not carry and present:
            fieldsets = [
                (name, {**options, "fields": _without(options["fields"], version)})
                for name, options in fieldsets
            ]
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: models.Model | None = None) -> Any:
        readonly = super().get_readonly_fields(request, obj)
        # The version must travel as an input, so it cannot be a read-only display.
        return [name for name in readonly if name != self.version_field_name]

    def formfield_for_dbfield(
        self, db_field: models.Field[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> forms.Field | None:
        if db_field.name == self.version_field_name and db_field.model is self.model:
            return forms.IntegerField(widget=forms.HiddenInput, required=False, min_value=0)
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_form(
        self,
        request: HttpRequest,
        obj: models.Model | None = None,
        change: bool = False,
        **kwargs: Any,
    ) -> type[forms.ModelForm]:  # type: ignore[type-arg]
        form = super().get_form(request, obj, change, **kwargs)
        if obj is None or self.version_field_name not in form.base_fields:
            return form
        attrs = {"uow_conflict": getattr(request, "_uow_version_conflict", None)}
        return type(form.__name__, (VersionCheckedForm, form), attrs)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ConcurrencyError as error:
            # Someone saved between our form check and our UPDATE. The transaction has
            # rolled back; validate the same POST again, which now shows the conflict.
            if request.method != "POST" or hasattr(request, "_uow_version_conflict"):
                raise
            request._uow_version_conflict = error  # type: ignore[attr-defined]
            return super().changeform_view(request, object_id, form_url, extra_context)

    # -- changelist actions ---------------------------------------------------------------

    def action_checkbox(self, obj: models.Model) -> SafeString:
        checkbox = super().action_checkbox(obj)
        return format_html(
            '{}<input type="hidden" name="{}{}" value="{}">',
            checkbox,
            VERSION_POST_PREFIX,
            obj.pk,
            getattr(obj, version_field_of(obj).attname),
        )

    # Django 4.2 renders the header from this attribute; 5.x special-cases the name.
    if hasattr(admin.ModelAdmin.action_checkbox, "short_description"):
        action_checkbox.short_description = (  # type: ignore[attr-defined]
            admin.ModelAdmin.action_checkbox.short_description
        )

    delete_selected_confirmation_template = (
        "django_uow/admin/versioned_delete_selected_confirmation.html"
    )

    def response_action(
        self, request: HttpRequest, queryset: models.QuerySet[Any], *args: Any, **kwargs: Any
    ) -> HttpResponse | None:
        stale = self.stale_selection(request, queryset)
        if stale:
            self.message_user(request, self._stale_message(stale), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
        try:
            # All or nothing, so a refused delete leaves no "deleted" log entries behind.
            with transaction.atomic(using=router.db_for_write(self.model)):
                return super().response_action(request, queryset, *args, **kwargs)
        except ConcurrencyError as error:
            self.message_user(request, str(error), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def stale_selection(
        self, request: HttpRequest, queryset: models.QuerySet[Any]
    ) -> dict[str, tuple[int | None, int | None]]:
        """Selected rows whose posted version is not current: ``{pk: (posted, current)}``.

        A current version of ``None`` means the row was deleted. Rows posted without a
        version (e.g. by a custom template) are not checked.
        """
        posted = submitted_versions(request)
        if not posted:
            return {}
        current = {
            str(pk): version
            for pk, version in queryset.model._base_manager.using(queryset.db)
            .filter(pk__in=list(posted))
            .values_list("pk", version_field_of(queryset.model).attname)
        }
        return {
            pk: (version, current.get(pk))
            for pk, version in posted.items()
            if version is None or current.get(pk) != version
        }

    def _stale_message(self, stale: dict[str, tuple[int | None, int | None]]) -> str:
        opts = self.model._meta
        details = ", ".join(
            f"pk {pk}: " + (f"version {mine}, now {now}" if now is not None else "deleted")
            for pk, (mine, now) in sorted(stale.items())
        )
        count = len(stale)
        name = opts.verbose_name if count == 1 else opts.verbose_name_plural
        return ngettext(
            "%(count)d selected %(name)s was changed by someone else since the list was "
            "loaded (%(details)s). Nothing was done; reload the list and try again.",
            "%(count)d selected %(name)s were changed by someone else since the list was "
            "loaded (%(details)s). Nothing was done; reload the list and try again.",
            count,
        ) % {"count": count, "name": name, "details": details}

    def delete_queryset(self, request: HttpRequest, queryset: models.QuerySet[Any]) -> None:
        """Delete each object with its version-checked ``delete()``, not one bulk DELETE.

        The versions posted with the selection are the expected ones, so a row changed
        after the confirmation page was shown raises ``ConcurrencyError`` (nothing is
        deleted and the admin shows the error).
        """
        posted = submitted_versions(request)
        with transaction.atomic(using=queryset.db):
            for obj in queryset:
                version = posted.get(str(obj.pk))
                if version is not None:
                    setattr(obj, version_field_of(obj).attname, version)
                obj.delete()


class VersionedModelAdmin(VersionedAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    """A ``ModelAdmin`` with optimistic locking for a ``VersionedModel``."""


def submitted_versions(request: HttpRequest) -> dict[str, int | None]:
    """``{pk: version}`` for the selected rows that posted a version (``None`` if unreadable)."""
    result: dict[str, int | None] = {}
    for pk in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
        raw = request.POST.get(f"{VERSION_POST_PREFIX}{pk}")
        if raw is None:
            continue
        try:
            result[pk] = int(raw)
        except ValueError:
            result[pk] = None
    return result


def _without(fields: Any, version: str) -> list[Any]:
    kept: list[Any] = []
    for entry in fields:
        if isinstance(entry, list | tuple):
            row = [name for name in entry if name != version]
            if row:
                kept.append(tuple(row))
        elif entry != version:
            kept.append(entry)
    return kept
