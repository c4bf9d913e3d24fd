"""Real child processes for the delivery tests: Celery workers and relays on the test
database, started in process groups of their own so that a kill reaches their children."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from django.db import connection

#: Worker options every test worker uses: no gossip or mingle (seconds at start-up).
WORKER_OPTIONS = ("--without-gossip", "--without-mingle", "--loglevel=WARNING")


def _env(extra: Mapping[str, Any] | None, **env: Any) -> dict[str, str]:
    merged = {**os.environ, **{k: str(v) for k, v in env.items() if v is not None}}
    if extra:
        merged["UOW_EXTRA"] = json.dumps(dict(extra))
    return merged


def start_worker(
    *options: str, extra: Mapping[str, Any] | None = None, **env: Any
) -> subprocess.Popen[bytes]:
    """A real Celery worker (``tests.worker_subprocess``); ``extra`` is merged into
    ``DJANGO_UOW``; ``env`` sets UOW_HANDLER_SLEEP, UOW_CLOCK_SKEW and the like."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.worker_subprocess",
            connection.settings_dict["NAME"],
            *(options or ("--pool=threads", "--concurrency=4")),
            *WORKER_OPTIONS,
        ],
        env=_env(extra, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def start_relay(
    *options: str, extra: Mapping[str, Any] | None = None, **env: Any
) -> subprocess.Popen[bytes]:
    """``manage.py relay_outbox`` in a child process (``tests.relay_subprocess``)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.relay_subprocess",
            connection.settings_dict["NAME"],
            *options,
        ],
        env=_env(extra, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Kill ``proc`` and its process group, and reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=20)


@contextmanager
def running(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            stop(proc)


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def start_asgi_server(
    port: int, *, extra: Mapping[str, Any] | None = None, **env: Any
) -> subprocess.Popen[bytes]:
    """The test project under uvicorn on 127.0.0.1:``port`` (``tests.asgi_subprocess``)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.asgi_subprocess",
            connection.settings_dict["NAME"],
            str(port),
        ],
        env=_env(extra, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until something listens on 127.0.0.1:``port``; fail with ``proc``'s stderr if it
    exits first."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"the server exited with {proc.returncode}: {stderr[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} after {timeout}s")
