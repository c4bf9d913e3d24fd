"""Packaging: the public API, lazy model exports, migrations in sync with models."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import warnings
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

import django_uow


def test_the_package_under_test_is_the_expected_one() -> None:
    # `make test-wheel` sets UOW_EXPECT_INSTALLED: the installed wheel, not a checkout, runs.
    package = Path(django_uow.__file__).resolve().parent
    if os.environ.get("UOW_EXPECT_INSTALLED"):
        assert package.is_relative_to(Path(sysconfig.get_paths()["purelib"]).resolve()), package
        assert (package / "migrations" / "0001_initial.py").is_file()
        assert (package / "py.typed").is_file()
    else:
        assert package == Path(__file__).resolve().parents[2] / "django_uow"


def test_deprecation_warnings_from_the_package_are_errors() -> None:
    # pytest's filterwarnings turns the package's own DeprecationWarnings into errors...
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old", DeprecationWarning, "conf.py", 1, module="django_uow.conf")
    # ...and only those: a third party's stays a warning.
    with pytest.warns(DeprecationWarning):
        warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module="elsewhere")


def test_import_before_django_setup_works() -> None:
    code = (
        "import django_uow, sys; "
        "assert 'django_uow.models' not in sys.modules; "
        "print(django_uow.UnitOfWork.__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "UnitOfWork"


def test_public_names_are_exported() -> None:
    for name in django_uow.__all__:
        assert getattr(django_uow, name) is not None, name
    from django_uow.models import AggregateRoot, OutboxEvent

    assert django_uow.AggregateRoot is AggregateRoot
    assert django_uow.OutboxEvent is OutboxEvent
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        django_uow.Nope  # noqa: B018


@pytest.mark.django_db
def test_migrations_match_models() -> None:
    out = StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exit_:  # pragma: no cover - the failure path
        pytest.fail(f"Models and migrations have drifted:\n{out.getvalue()}")
        raise exit_


@pytest.mark.postgres
@pytest.mark.django_db
def test_outbox_table_leaves_room_for_in_place_claim_updates() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reloptions FROM pg_class WHERE relname = %s", ["django_uow_outboxevent"]
        )
        (options,) = cursor.fetchone()
    assert "fillfactor=50" in (options or [])
