"""Every ``django_uow`` system check id: the wrong value is named, the right one passes."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_uow.checks import check_settings

# The checks read settings.DATABASES; overriding it does not touch the open connections.
pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")

SQLITE = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
POSTGRES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}}
# A valid baseline that neither needs Celery nor warns on SQLite.
BASE: dict[str, Any] = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["tests.project.test_checks.Dummy"]}


class Dummy:
    """An importable stand-in publisher (the check only imports the path)."""


def run(**uow: Any) -> list[Any]:
    with override_settings(DJANGO_UOW={**BASE, **uow}):
        return check_settings()


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_valid_settings_pass() -> None:
    assert run() == []


def test_every_default_passes_its_own_check() -> None:
    from django_uow.conf import DEFAULTS

    defaults = {k: v for k, v in DEFAULTS.items() if k not in ("PUBLISHERS", "RELAY_ON_COMMIT")}
    with override_settings(DATABASES=POSTGRES):
        assert run(**defaults) == []


def test_e001_not_a_dict() -> None:
    with override_settings(DJANGO_UOW=["RELAY_ON_COMMIT"]):
        messages = check_settings()
    assert ids(messages) == ["django_uow.E001"]
    assert "must be a dict, not list" in messages[0].msg


def test_e002_unknown_key_is_named() -> None:
    messages = run(BATCHSIZE=10)
    assert ids(messages) == ["django_uow.E002"]
    assert "'BATCHSIZE'" in messages[0].msg
    assert "BATCH_SIZE" in messages[0].hint


@pytest.mark.parametrize("value", ["yes", None, 1, "Celery"])
def test_e003_relay_on_commit(value: Any) -> None:
    messages = run(RELAY_ON_COMMIT=value)
    assert ids(messages) == ["django_uow.E003"]
    assert repr(value) in messages[0].msg


@pytest.mark.parametrize("value", ["inline", False])
def test_e003_accepts_valid_relay_modes(value: Any) -> None:
    assert run(RELAY_ON_COMMIT=value) == []


@pytest.mark.parametrize("value", ["django_uow.publishers.InlinePublisher", [1], [], None])
def test_e004_publishers_shape(value: Any) -> None:
    assert ids(run(PUBLISHERS=value)) == ["django_uow.E004"]


def test_e005_publisher_that_does_not_import_is_named() -> None:
    messages = run(PUBLISHERS=["tests.project.test_checks.Dummy", "myproject.nowhere.Publisher"])
    assert ids(messages) == ["django_uow.E005"]
    assert "'myproject.nowhere.Publisher'" in messages[0].msg


def test_e005_missing_attribute() -> None:
    messages = run(PUBLISHERS=["tests.project.test_checks.NoSuchPublisher"])
    assert ids(messages) == ["django_uow.E005"]
    assert "NoSuchPublisher" in messages[0].msg


@pytest.mark.parametrize(
    ("key", "bad", "good", "check_id"),
    [
        ("BATCH_SIZE", 0, 100, "E006"),
        ("BATCH_SIZE", "500", 1, "E006"),
        ("BATCH_SIZE", True, 1, "E006"),
        ("MAX_ATTEMPTS", 0, 1, "E007"),
        ("MAX_ATTEMPTS", 2.5, 3, "E007"),
        ("PRUNE_BATCH_SIZE", -1, 1000, "E011"),
        ("LEASE", 0, 0.5, "E012"),
        ("LEASE", "60", 60, "E012"),
        ("STREAM_MAXLEN", 0, None, "E015"),
        ("STREAM_MAXLEN", "1000", 1000, "E015"),
        ("CELERY_QUEUE", "", "outbox", "E016"),
        ("CELERY_QUEUE", 5, None, "E016"),
        ("CELERY_RELAY_TASK", "", "myproject.tasks.relay", "E017"),
        ("CELERY_RELAY_TASK", None, "django_uow.tasks.relay_outbox", "E017"),
        ("NOTIFY", "yes", True, "E019"),
        ("NOTIFY", 1, False, "E019"),
        ("FAST_PATH_TIMEOUT", 0, 0.2, "E020"),
        ("FAST_PATH_TIMEOUT", "0.2", 1, "E020"),
        ("FAST_PATH_TIMEOUT", 120, 60, "E020"),
        ("FAST_PATH_COOLDOWN", -1, 0, "E021"),
        ("FAST_PATH_COOLDOWN", None, 5.0, "E021"),
        ("HANDLER_BATCH", 0, 50, "E090"),
        ("HANDLER_BATCH", "50", 1, "E090"),
    ],
)
def test_scalar_keys(key: str, bad: Any, good: Any, check_id: str) -> None:
    messages = run(**{key: bad})
    assert ids(messages) == [f"django_uow.{check_id}"]
    assert key in messages[0].msg and repr(bad) in messages[0].msg
    assert run(**{key: good}) == []


@pytest.mark.parametrize("value", [(5, 1), (0, 10), (1,), "1,300", (1, "300"), None, (-1, 5)])
def test_e008_backoff(value: Any) -> None:
    assert ids(run(BACKOFF=value)) == ["django_uow.E008"]


@pytest.mark.parametrize("value", [(1, 300), [0.5, 0.5], (2.0, 60)])
def test_e008_backoff_valid(value: Any) -> None:
    assert run(BACKOFF=value) == []


def test_e009_ordering() -> None:
    messages = run(ORDERING="per-aggregate")
    assert ids(messages) == ["django_uow.E009"]
    assert run(ORDERING="none") == []


@pytest.mark.parametrize("value", [timedelta(0), -5, "7d", None])
def test_e010_retention(value: Any) -> None:
    assert ids(run(RETENTION=value)) == ["django_uow.E010"]


@pytest.mark.parametrize("value", [timedelta(hours=1), 3600, 0.5])
def test_e010_retention_valid(value: Any) -> None:
    assert run(RETENTION=value) == []


@pytest.mark.parametrize("value", ["http://localhost", "", None])
def test_e013_redis_url(value: Any) -> None:
    assert ids(run(REDIS_URL=value)) == ["django_uow.E013"]


@pytest.mark.parametrize("value", ["", None, "uow:{aggregate}", "uow:{", "uow:{0}"])
def test_e014_stream_key(value: Any) -> None:
    assert ids(run(STREAM_KEY=value)) == ["django_uow.E014"]


@pytest.mark.parametrize("value", ["events", "uow:{event_type}", "{aggregate_type}:{event_type}"])
def test_e014_stream_key_valid(value: Any) -> None:
    assert run(STREAM_KEY=value) == []


def test_e018_celery_relay_without_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "celery", None)  # makes find_spec/import see no Celery
    with override_settings(DATABASES=POSTGRES):
        messages = run(RELAY_ON_COMMIT="celery")
    assert ids(messages) == ["django_uow.E018"]
    assert "RELAY_ON_COMMIT is 'celery'" in messages[0].msg


def test_e018_celery_publisher_without_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "celery", None)
    messages = run(PUBLISHERS=["django_uow.publishers.CeleryPublisher"])
    # Reported once as E018, not also as an import failure (E005).
    assert ids(messages) == ["django_uow.E018"]
    assert "CeleryPublisher" in messages[0].msg


def test_e018_not_raised_when_celery_is_installed() -> None:
    pytest.importorskip("celery")
    with override_settings(DATABASES=POSTGRES):
        assert "django_uow.E018" not in ids(run(RELAY_ON_COMMIT="celery"))


def test_w001_sqlite_with_celery_relay() -> None:
    with override_settings(DATABASES=SQLITE):
        messages = run(RELAY_ON_COMMIT="celery")
    assert ids(messages) == ["django_uow.W001"]
    assert "SQLite" in messages[0].msg


def test_w001_sqlite_with_beat_relay() -> None:
    beat = {"relay": {"task": "django_uow.tasks.relay_outbox", "schedule": 5.0}}
    with override_settings(DATABASES=SQLITE, CELERY_BEAT_SCHEDULE=beat):
        messages = run()
    assert ids(messages) == ["django_uow.W001"]
    assert "CELERY_BEAT_SCHEDULE['relay'] runs the relay task" in messages[0].msg
    assert "remove CELERY_BEAT_SCHEDULE['relay']" in (messages[0].hint or "")


def test_w001_names_only_the_beat_entries_that_run_the_relay() -> None:
    beat = {
        "relay": {"task": "django_uow.tasks.relay_outbox", "schedule": 5.0},
        "prune": {"task": "django_uow.tasks.prune_outbox", "schedule": 3600.0},
        "reports": {"task": "shop.tasks.send_reports", "schedule": 60.0},
    }
    with override_settings(DATABASES=SQLITE, CELERY_BEAT_SCHEDULE=beat):
        (message,) = run(RELAY_ON_COMMIT="inline")
    assert "'relay'" in message.msg and "'prune'" not in message.msg
    assert "'reports'" not in message.msg


def test_w001_quiet_in_inline_mode_with_a_beat_schedule_that_does_not_relay() -> None:
    beat = {"prune": {"task": "django_uow.tasks.prune_outbox", "schedule": 3600.0}}
    with override_settings(DATABASES=SQLITE, CELERY_BEAT_SCHEDULE=beat):
        assert "django_uow.W001" not in ids(run(RELAY_ON_COMMIT="inline"))


def test_w001_not_on_postgres_or_inline() -> None:
    with override_settings(DATABASES=POSTGRES):
        assert run(RELAY_ON_COMMIT="celery") == []
    with override_settings(DATABASES=SQLITE):
        assert run(RELAY_ON_COMMIT="inline") == []


def test_manage_py_check_names_the_wrong_key_and_value() -> None:
    with (
        override_settings(DJANGO_UOW={**BASE, "ORDERING": "random"}),
        pytest.raises(SystemCheckError) as excinfo,
    ):
        call_command("check")
    assert "django_uow.E009" in str(excinfo.value)
    assert "'random'" in str(excinfo.value)


@pytest.mark.parametrize(
    "value",
    [{"MAX_LAG": -1}, {"MAX_FAILED": "3"}, {"MAX_LAGG": 5}, [300, 0], {"MAX_LAG": True}],
)
def test_e032_health_thresholds(value: object) -> None:
    assert "django_uow.E032" in ids(run(HEALTH=value))


def test_e032_accepts_numbers_and_none() -> None:
    assert "django_uow.E032" not in ids(run(HEALTH={"MAX_LAG": 300, "MAX_FAILED": None}))
    assert "django_uow.E032" not in ids(run(HEALTH={}))


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"MAX_CONSUMER_LAG": -5}, "DJANGO_UOW['HEALTH']['MAX_CONSUMER_LAG'] must be a number"),
        ({"MAX_CONSUMER_LAG": "10m"}, "not '10m'"),
        ({"MAX_CONSUMER_LAGG": 600}, "has no key 'MAX_CONSUMER_LAGG'"),
    ],
)
def test_e032_names_the_wrong_consumer_lag_threshold(value: object, named: str) -> None:
    [message] = run(HEALTH=value)
    assert message.id == "django_uow.E032"
    assert named in message.msg
    assert "MAX_CONSUMER_LAG" in message.hint


def test_e032_accepts_a_consumer_lag_threshold() -> None:
    assert run(HEALTH={"MAX_LAG": 60, "MAX_FAILED": 0, "MAX_CONSUMER_LAG": 600}) == []
    assert run(HEALTH={"MAX_CONSUMER_LAG": 0.5}) == []


@pytest.mark.parametrize(
    ("key", "value", "check"),
    [
        ("RABBITMQ_URL", "redis://127.0.0.1:6379/0", "django_uow.E030"),
        ("RABBITMQ_EXCHANGE", "", "django_uow.E031"),
        ("RABBITMQ_EXCHANGE", "amq.topic", "django_uow.E031"),
    ],
)
def test_rabbitmq_settings(key: str, value: object, check: str) -> None:
    assert check in ids(run(**{key: value}))


@pytest.mark.parametrize(
    ("key", "value", "check"),
    [
        ("NATS_URL", "amqp://127.0.0.1:4222", "django_uow.E060"),
        ("NATS_URL", None, "django_uow.E060"),
        ("NATS_STREAM", "", "django_uow.E061"),
        ("NATS_STREAM", "my.stream", "django_uow.E061"),
        ("NATS_SUBJECT_PREFIX", "events.>", "django_uow.E062"),
        ("NATS_SUBJECT_PREFIX", "a..b", "django_uow.E062"),
        ("NATS_SUBJECT_PREFIX", 5, "django_uow.E062"),
    ],
)
def test_nats_settings_are_refused_with_their_check(key: str, value: object, check: str) -> None:
    assert check in ids(run(**{key: value}))


def test_nats_defaults_and_good_values_pass() -> None:
    good = {
        "NATS_URL": "tls://127.0.0.1:4222",
        "NATS_STREAM": "ORDERS_1",
        "NATS_SUBJECT_PREFIX": "a.b",
    }
    assert not {"django_uow.E060", "django_uow.E061", "django_uow.E062"} & set(ids(run(**good)))
    assert not {"django_uow.E060", "django_uow.E061", "django_uow.E062"} & set(ids(run()))


# -- handler deadline and inbox retention ---------------------------------------------

CELERY = {"PUBLISHERS": ["django_uow.publishers.CeleryPublisher"]}


@pytest.mark.parametrize(
    ("key", "number"), [("HANDLER_DEADLINE", "E040"), ("INBOX_RETENTION", "E041")]
)
@pytest.mark.parametrize("value", [0, -5, "15m", None, True, timedelta(0)])
def test_durations_must_be_positive(key: str, number: str, value: Any) -> None:
    messages = run(**{key: value})
    assert ids(messages) == [f"django_uow.{number}"]
    assert key in messages[0].msg and repr(value) in messages[0].msg


@pytest.mark.parametrize("value", [timedelta(days=2), 86400, 3600.5])
def test_durations_accept_timedelta_and_seconds(value: Any) -> None:
    assert run(HANDLER_DEADLINE=value, INBOX_RETENTION=value) == []


def test_e042_inbox_retention_shorter_than_the_redelivery_window() -> None:
    # LEASE + MAX_ATTEMPTS x BACKOFF max = 60 + 5 x 100 = 560 s.
    window = {"LEASE": 60, "MAX_ATTEMPTS": 5, "BACKOFF": (1.0, 100.0)}
    messages = run(**window, INBOX_RETENTION=559)
    assert ids(messages) == ["django_uow.E042"]
    assert "559 s" in messages[0].msg and "560 s" in messages[0].msg
    assert run(**window, INBOX_RETENTION=560) == []
    # The defaults: 30 days against 60 + 10 x 300 s.
    assert run() == []


def test_e042_waits_for_valid_values() -> None:
    # A broken BACKOFF is reported as itself, not as a retention problem.
    assert ids(run(BACKOFF="slow", INBOX_RETENTION=1)) == ["django_uow.E008"]


def test_w040_deadline_not_shorter_than_the_visibility_timeout() -> None:
    with override_settings(DATABASES=POSTGRES):
        assert run(**CELERY) == []  # 15 minutes against Redis's default hour
        messages = run(**CELERY, HANDLER_DEADLINE=timedelta(hours=1))
        assert ids(messages) == ["django_uow.W040"]
        assert "3600 s" in messages[0].msg and "visibility_timeout" in messages[0].msg
        with override_settings(CELERY_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 600}):
            assert ids(run(**CELERY)) == ["django_uow.W040"]
            assert run(**CELERY, HANDLER_DEADLINE=300) == []
        # Not using Celery: nothing to relate the deadline to.
        assert run(HANDLER_DEADLINE=timedelta(hours=2)) == []


def test_w041_deadline_too_short() -> None:
    with override_settings(DATABASES=POSTGRES):
        messages = run(**CELERY, HANDLER_DEADLINE=30)
        assert ids(messages) == ["django_uow.W041"]
        assert "still waiting in the queue" in messages[0].msg
        assert run(**CELERY, HANDLER_DEADLINE=60) == []


def test_ordered_wait_must_be_a_duration_shorter_than_the_handler_deadline() -> None:
    assert run(ORDERED_WAIT=timedelta(seconds=30)) == []
    assert run(ORDERED_WAIT=30) == []
    for bad in (0, -1, "1m", timedelta(0), True):
        assert ids(run(ORDERED_WAIT=bad)) == ["django_uow.E070"], bad
    messages = run(ORDERED_WAIT=timedelta(minutes=15))
    assert ids(messages) == ["django_uow.E071"]
    assert "HANDLER_DEADLINE" in messages[0].msg
    assert ids(run(ORDERED_WAIT=120, HANDLER_DEADLINE=60)) == ["django_uow.E071"]
    # Unset, the wait follows a short deadline instead of contradicting it.
    assert run(HANDLER_DEADLINE=60) == []
    from django.test import override_settings

    from django_uow.conf import uow_settings

    with override_settings(DJANGO_UOW={"HANDLER_DEADLINE": 60}):
        wait = uow_settings.ORDERED_WAIT
    assert wait == timedelta(seconds=30)
    with override_settings(DJANGO_UOW={}):
        wait = uow_settings.ORDERED_WAIT
    assert wait == timedelta(minutes=1)
