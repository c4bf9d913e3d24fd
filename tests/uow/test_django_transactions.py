"""Django's own ``tests/transactions`` cases, run with units of work standing in for ``atomic``.

Django's test files are not shipped in its wheel and are never copied into this
repository: this module downloads the sdist of the installed Django with pip into a
temporary directory, imports ``tests/transactions`` from there, and runs its
``Atomic*`` and ``NonAutocommit`` classes twice: once with ``UnitOfWork`` and once with
``unit_of_work()`` in place of ``transaction.atomic``. It skips when pip cannot
download; deselect it with ``-m "not django_suite"``.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import types
import unittest
from collections.abc import Callable, Iterator
from contextlib import ContextDecorator
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.test.utils import override_settings

from django_uow import UnitOfWork, unit_of_work

pytestmark = pytest.mark.django_suite

CLASSES = [
    "AtomicTests",
    "AtomicInsideTransactionTests",
    "AtomicWithoutAutocommitTests",
    "AtomicMergeTests",
    "AtomicErrorsTests",
    "AtomicMySQLTests",
    "AtomicMiscTests",
    "NonAutocommitTests",
]


@pytest.fixture(scope="session")
def django_tests_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tests/`` of the installed Django's sdist, extracted to a temporary directory."""
    download = tmp_path_factory.mktemp("django-sdist")
    version = django.__version__
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"Django=={version}",
                "-d",
                str(download),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.SubprocessError, OSError) as error:
        pytest.skip(f"pip could not download the Django {version} sdist: {error}")
    (archive,) = download.glob("*.tar.gz")
    target = tmp_path_factory.mktemp("django-tests")
    prefix = f"{archive.name[: -len('.tar.gz')]}/tests/transactions/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.lower().startswith(prefix.lower())]
        for member in members:
            member.name = "transactions/" + member.name[len(prefix) :]
        tar.extractall(target, members=members, filter="data")
    return target


class UnitAsAtomic(UnitOfWork, ContextDecorator):
    """``UnitOfWork`` usable as ``@atomic`` too, the way Django's tests use ``atomic``."""


def atomic_by_unit_of_work_class(
    using: Any = None, savepoint: bool = True, durable: bool = False
) -> Any:
    if durable:
        raise NotImplementedError("units of work have no durable=")
    if callable(using):
        return UnitAsAtomic()(using)
    return UnitAsAtomic(using or DEFAULT_DB_ALIAS, savepoint=savepoint)


def atomic_by_unit_of_work_decorator(
    using: Any = None, savepoint: bool = True, durable: bool = False
) -> Any:
    if durable:
        raise NotImplementedError("units of work have no durable=")
    if callable(using):
        return unit_of_work(using)
    return unit_of_work(using=using or DEFAULT_DB_ALIAS, savepoint=savepoint)


class TransactionModule(types.ModuleType):
    """``django.db.transaction`` with ``atomic`` replaced."""

    def __init__(self, atomic: Callable[..., Any]) -> None:
        super().__init__("transaction")
        self.atomic = atomic

    def __getattr__(self, name: str) -> Any:
        return getattr(transaction, name)


@pytest.fixture
def django_transactions_module(
    django_tests_dir: Path, django_db_setup: None, django_db_blocker: Any
) -> Iterator[types.ModuleType]:
    sys.path.insert(0, str(django_tests_dir))
    try:
        with (
            django_db_blocker.unblock(),
            override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, "transactions"]),
        ):
            from transactions import models, tests  # type: ignore[import-not-found]

            with connection.schema_editor() as editor:
                editor.create_model(models.Reporter)
            try:
                yield tests
            finally:
                with connection.schema_editor() as editor:
                    editor.delete_model(models.Reporter)
    finally:
        sys.path.remove(str(django_tests_dir))


@pytest.mark.parametrize(
    "atomic",
    [atomic_by_unit_of_work_class, atomic_by_unit_of_work_decorator],
    ids=["UnitOfWork", "unit_of_work"],
)
@pytest.mark.parametrize("class_name", CLASSES)
def test_djangos_atomic_cases_pass_with_units_of_work(
    class_name: str,
    atomic: Callable[..., Any],
    django_transactions_module: types.ModuleType,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(django_transactions_module, "transaction", TransactionModule(atomic))
    suite = unittest.TestLoader().loadTestsFromTestCase(
        getattr(django_transactions_module, class_name)
    )
    output = io.StringIO()
    result = unittest.TextTestRunner(stream=output, verbosity=2).run(suite)
    assert result.testsRun > 0
    assert result.wasSuccessful(), output.getvalue()
    assert not connection.in_atomic_block
