"""Nothing secret leaves: REDACT globs, the quoted values of payloads that do not decode
(in last_error, the relay's ERROR log, outbox_status text and JSON), control characters in
log lines, and a schema-version mismatch that fails for good at once."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings

from django_uow import DomainEvent, Envelope
from django_uow.delivery.handlers import event_handler, registry
from django_uow.events.decoding import _misfit
from django_uow.events.redaction import MASK, Redactor, redact
from django_uow.models import OutboxEvent
from django_uow.testing import drain_outbox

pytestmark = pytest.mark.django_db

SECRETS = ("s3cr3t-value", "tok-value", "hunter2-value")


@dataclass(frozen=True)
class Metered(DomainEvent):
    event_type = "secrets.Metered"
    count: int


@pytest.fixture
def handled() -> Iterator[list[DomainEvent]]:
    seen: list[DomainEvent] = []

    @event_handler(Metered, idempotent=False, name="secrets.metered")
    def receive(event: DomainEvent, envelope: Envelope) -> None:
        seen.append(event)

    yield seen
    registry.unregister("secrets.metered")


def row(payload: Any, headers: dict[str, Any] | None = None, **fields: Any) -> OutboxEvent:
    return OutboxEvent.objects.create(
        event_id=uuid.uuid4(),
        event_type=fields.pop("event_type", Metered.event_type),
        aggregate_type="testapp.order",
        aggregate_id=fields.pop("aggregate_id", uuid.uuid4().hex[:8]),
        payload=payload,
        headers={"schema_version": 1} if headers is None else headers,
        **fields,
    )


# -- REDACT globs -------------------------------------------------------------------------


def test_the_built_in_list_masks_keys_that_contain_a_secret_word() -> None:
    shown = redact(
        {
            "client_secret": 1,
            "GitHub_Token": 2,
            "X-Api-Key": 3,
            "db_password_hash": 4,
            "aws_credentials": {"id": 5},
            "plain": 6,
            "proxy-authorization": 7,
        }
    )
    assert shown == {
        "client_secret": MASK,
        "GitHub_Token": MASK,
        "X-Api-Key": MASK,
        "db_password_hash": MASK,
        "aws_credentials": MASK,
        "plain": 6,
        "proxy-authorization": MASK,
    }


def test_the_setting_takes_globs_for_names_and_path_segments() -> None:
    secret = Redactor(["*ssn*", "card.*", "lines.?in"])
    assert secret(
        {
            "customer_ssn_last4": 1,
            "card": {"number": 2, "cvc": 3},
            "other": {"card": {"number": 4}},
            "lines": [{"pin": 5, "bin": 6, "spin": 7}],
        }
    ) == {
        "customer_ssn_last4": MASK,
        "card": {"number": MASK, "cvc": MASK},
        "other": {"card": {"number": 4}},  # a path counts from the top
        "lines": [{"pin": MASK, "bin": MASK, "spin": 7}],
    }
    with override_settings(DJANGO_UOW={"REDACT": ["*ssn*"]}):
        assert redact({"ssn_hash": "x"}) == {"ssn_hash": MASK}


# -- errors of payloads that do not decode ------------------------------------------------


def test_a_misfit_value_is_quoted_with_its_nested_secrets_masked() -> None:
    text = str(_misfit("count", "int", {"token": "tok-value", "client_secret": "s", "n": 1}))
    assert "tok-value" not in text and "'client_secret': '[redacted]'" in text
    assert "'n': 1" in text  # what is not secret still helps to find the cause
    with override_settings(DJANGO_UOW={"REDACT": ["count.pin"]}):
        assert "4242" not in str(_misfit("count", "int", {"pin": "4242"}))


def test_secrets_in_a_payload_that_does_not_decode_reach_no_output(
    handled: list[DomainEvent], caplog: pytest.LogCaptureFixture
) -> None:
    bad = row({"count": {"client_secret": SECRETS[0], "api_token": SECRETS[1], "n": 3}})
    listed = row([{"password": SECRETS[2]}])  # not even a JSON object
    with caplog.at_level(logging.ERROR, logger="django_uow"):
        summary = drain_outbox()
    assert summary.failed == 2 and handled == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(str(bad.event_id) in message for message in errors)
    bad.refresh_from_db()
    listed.refresh_from_db()
    assert "payload field 'count' is not a valid int" in bad.last_error
    assert "payload is not a JSON object" in listed.last_error
    text, as_json = io.StringIO(), io.StringIO()
    call_command("outbox_status", stdout=text)
    call_command("outbox_status", "--json", stdout=as_json)
    assert str(bad.event_id) in text.getvalue()
    assert json.loads(as_json.getvalue())["blocking_heads"]
    for output in (bad.last_error, listed.last_error, text.getvalue(), as_json.getvalue()):
        for secret in SECRETS:
            assert secret not in output
    for message in errors:
        for secret in SECRETS:
            assert secret not in message


# -- log lines ----------------------------------------------------------------------------


def test_log_lines_escape_control_characters(caplog: pytest.LogCaptureFixture) -> None:
    from django_uow.retry import logger_for

    log = logger_for("django_uow.relay")
    assert log is logger_for("django_uow.relay") and len(log.filters) == 1  # added once
    evil = "oops\x1b[2J\x1b]0;owned\x07\nFAKE relay line\r"
    with caplog.at_level(logging.INFO, logger="django_uow.relay"):
        log.info("Event %s failed: %s", "e-1", evil)
        try:
            raise ValueError(evil)
        except ValueError:
            log.exception("Handler %s failed", "h\x1b[31m")
    plain, traced = caplog.records[-2:]
    assert plain.getMessage() == (
        "Event e-1 failed: oops\\x1b[2J\\x1b]0;owned\\x07\\x0aFAKE relay line\\x0d"
    )
    assert traced.getMessage() == "Handler h\\x1b[31m failed"
    assert traced.exc_text is not None
    assert "\x1b" not in traced.exc_text and "ValueError: oops\\x1b[2J" in traced.exc_text
    assert "\n" in traced.exc_text  # a traceback keeps its lines
    formatted = logging.Formatter().format(traced)
    assert "\x1b" not in formatted and "\x07" not in formatted
    # Handlers that read the arguments (aggregators, counters) still get them, escaped.
    assert plain.msg == "Event %s failed: %s"
    assert plain.args == ("e-1", "oops\\x1b[2J\\x1b]0;owned\\x07\\x0aFAKE relay line\\x0d")


def test_escaping_keeps_numbers_and_clean_objects_as_they_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import uuid

    from django_uow.retry import logger_for

    log = logger_for("django_uow.relay")
    ref = uuid.UUID(int=7)
    with caplog.at_level(logging.INFO, logger="django_uow.relay"):
        log.info("%d rows of %s took %.1f s", 3, ref, 0.25)
    (record,) = caplog.records
    assert record.args == (3, ref, 0.25)
    assert record.getMessage() == f"3 rows of {ref} took 0.2 s"


def test_escape_control_keeps_ordinary_text() -> None:
    from django_uow.retry import escape_control

    assert escape_control("naïve café ✓ 100%") == "naïve café ✓ 100%"
    assert escape_control("a\tb\nc", keep_lines=True) == "a\tb\nc"
    assert escape_control("\x9b31m") == "\\x9b31m"  # a C1 control sequence introducer


# -- schema versions ----------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, "x"])
def test_a_schema_version_mismatch_fails_for_good_on_the_first_attempt(
    handled: list[DomainEvent], settings: Any, version: Any
) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "MAX_ATTEMPTS": 5}
    newer = row({"count": 1}, headers={"schema_version": version})
    summary = drain_outbox()
    newer.refresh_from_db()
    assert (summary.failed, newer.status, newer.attempts) == (1, "failed", 1)
    assert newer.last_error.startswith("EventDecodeError: ")
    assert "schema version" in newer.last_error
    assert handled == []
