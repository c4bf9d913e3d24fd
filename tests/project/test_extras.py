"""The extras install what they promise: ``[celery]`` gives a working Redis worker.

Builds the wheel once, installs ``django-uow[celery]`` into a fresh venv, and starts a
real Celery worker from that venv against the test Redis, which runs
``django_uow.tasks.handle_event`` for an event published by a tiny project written to a
temporary directory. Then ``[rabbitmq]``, ``[nats]`` and ``[prometheus]`` go into the same venv and
their modules import. It runs in the SQLite pass only (the database plays no part).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests import settings as test_settings
from tests.conftest import CI, require_server

# celery: the Django 4.2 and 5.1 passes leave it out; the SQLite pass of make test runs it.
pytestmark = [
    pytest.mark.celery,
    pytest.mark.redis,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        os.environ.get("UOW_DB", "sqlite") != "sqlite",
        reason="runs in the SQLite pass (the database plays no part)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = test_settings.REDIS_DB
WORKER_BUDGET = 60.0

SETTINGS = """
from pathlib import Path
HERE = Path(__file__).resolve().parent
SECRET_KEY = "extras"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_uow", "pingapp"]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": str(HERE / "db.sqlite3")}}}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
CELERY_BROKER_URL = "redis://127.0.0.1:6379/{db}"
CELERY_TASK_IGNORE_RESULT = True
DJANGO_UOW = {{
    "RELAY_ON_COMMIT": False,
    "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"],
    "CELERY_QUEUE": "{queue}",
}}
"""

EVENTS = """
from dataclasses import dataclass
from django_uow import DomainEvent

@dataclass(frozen=True)
class Pinged(DomainEvent):
    event_type = "pingapp.Pinged"
    text: str
"""

HANDLERS = """
from pathlib import Path
from django_uow import event_handler
from .events import Pinged

@event_handler(Pinged)
def write_marker(event):
    (Path(__file__).resolve().parent.parent / "handled.txt").write_text(event.text)
"""

CELERY_APP = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pingsettings")
import django
from celery import Celery
app = Celery("ping")
app.config_from_object("django.conf:settings", namespace="CELERY")
django.setup()
"""

PUBLISH = """
import pingcelery  # the project's Celery app (broker: the test Redis), as in a real project
from django_uow import UnitOfWork
from django_uow.relay import relay_pending
from pingapp.events import Pinged
with UnitOfWork() as uow:
    uow.record_event(Pinged(text="{text}"))
print(relay_pending())
"""


def run(
    args: list[str], cwd: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(cwd), **env}
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    environment.update(env)
    return subprocess.run(
        args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )


def pip_install(venv: Path, *requirements: str, cwd: Path) -> None:
    done = run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *requirements], cwd)
    if done.returncode == 0:
        return
    output = done.stdout + done.stderr
    unreachable = any(
        sign in output
        for sign in ("Failed to establish", "No matching distribution", "Could not find a version")
    )
    if unreachable and not CI:
        pytest.skip(f"pip cannot reach the package index: {output.strip()[-300:]}")
    pytest.fail(f"pip install {' '.join(requirements)} failed:\n{output[-3000:]}")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    built = run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
        dist,
    )
    if built.returncode != 0:
        if not CI and "Failed to establish" in built.stderr:
            pytest.skip(f"cannot build the wheel without the index: {built.stderr[-300:]}")
        pytest.fail(f"building the wheel failed:\n{built.stdout}{built.stderr}")
    (found,) = dist.glob("django_uow-*.whl")
    return found


def write_project(root: Path, queue: str) -> None:
    (root / "pingapp").mkdir()
    (root / "pingapp" / "__init__.py").write_text("")
    (root / "pingapp" / "events.py").write_text(textwrap.dedent(EVENTS))
    (root / "pingapp" / "handlers.py").write_text(textwrap.dedent(HANDLERS))
    (root / "pingsettings.py").write_text(SETTINGS.format(db=REDIS_DB, queue=queue))
    (root / "pingcelery.py").write_text(textwrap.dedent(CELERY_APP))


def test_the_celery_extra_gives_a_working_redis_worker(wheel: Path, tmp_path: Path) -> None:
    require_server("Redis", "127.0.0.1", 6379)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip_install(venv, f"{wheel}[celery]", cwd=tmp_path)
    python = str(venv / "bin" / "python")

    project = tmp_path / "project"
    project.mkdir()
    queue = f"uow-extras-{uuid.uuid4().hex[:8]}"
    write_project(project, queue)
    settings = {"DJANGO_SETTINGS_MODULE": "pingsettings"}
    migrated = run([python, "-m", "django", "migrate", "-v", "0"], project, **settings)
    assert migrated.returncode == 0, migrated.stderr

    log = (project / "worker.log").open("w")
    worker = subprocess.Popen(
        [
            str(venv / "bin" / "celery"),
            "-A",
            "pingcelery",
            "worker",
            "--pool=solo",
            "-Q",
            queue,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "info",
        ],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project), **settings},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        text = uuid.uuid4().hex
        published = run([python, "-c", PUBLISH.format(text=text)], project, **settings)
        assert published.returncode == 0, published.stderr
        marker = project / "handled.txt"
        deadline = time.monotonic() + WORKER_BUDGET
        while time.monotonic() < deadline and not marker.exists():
            assert worker.poll() is None, (project / "worker.log").read_text()[-3000:]
            time.sleep(0.25)
        assert marker.exists(), (project / "worker.log").read_text()[-3000:]
        assert marker.read_text() == text
        outcome = run(
            [
                python,
                "-c",
                "import django; django.setup(); from django_uow.models import "
                "ProcessedEvent as P; print(list(P.objects.values_list('handler', 'status')))",
            ],
            project,
            **settings,
        )
        assert "'succeeded'" in outcome.stdout, outcome.stdout + outcome.stderr
        assert "django_uow.tasks.handle_event" in (project / "worker.log").read_text()
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
        log.close()

    pip_install(venv, f"{wheel}[rabbitmq,nats,prometheus]", cwd=tmp_path)
    imported = run(
        [
            python,
            "-c",
            "import django; django.setup(); from django_uow.publishers import RabbitMQPublisher; "
            "from django_uow.publishers import NatsJetStreamPublisher; "
            "import django_uow.contrib.prometheus as m; import amqp, nats, prometheus_client; "
            "print(RabbitMQPublisher.__name__, NatsJetStreamPublisher.__name__, m.__name__)",
        ],
        project,
        **settings,
    )
    assert imported.returncode == 0, imported.stderr
    assert (
        "RabbitMQPublisher NatsJetStreamPublisher django_uow.contrib.prometheus" in imported.stdout
    )
