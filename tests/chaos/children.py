"""The trial's child processes (relays, the Celery worker), each in a process group.

Each child runs in a session of its own (``start_new_session``), so SIGKILL, SIGSTOP
and SIGCONT reach a worker's pool processes too, and ``close()`` leaves nothing behind.
On Linux a child also gets ``PR_SET_PDEATHSIG``: if the trial itself dies, its children
die with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import IO, Any

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class _Spawner:
    """One daemon thread that starts every child and lives as long as the process."""

    def __init__(self) -> None:
        self.requests: queue.Queue[tuple[Callable[[], Any], list[Any], threading.Event]] = (
            queue.Queue()
        )
        threading.Thread(target=self._serve, name="chaos-spawner", daemon=True).start()

    def _serve(self) -> None:
        while True:
            call, box, done = self.requests.get()
            try:
                box.append(call())
            except BaseException as exc:
                box.append(exc)
            finally:
                done.set()

    def run(self, call: Callable[[], Any]) -> Any:
        box: list[Any] = []
        done = threading.Event()
        self.requests.put((call, box, done))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]


_spawner: list[_Spawner] = []
_spawner_lock = threading.Lock()


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **kwargs)`` from the spawner thread."""
    with _spawner_lock:
        if not _spawner:
            _spawner.append(_Spawner())
    return _spawner[0].run(lambda: subprocess.Popen(argv, **kwargs))  # type: ignore[no-any-return]


def append_only_log() -> IO[bytes]:
    """An anonymous log file opened with O_APPEND: the child writes at its end whatever
    offset this process reads it at."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
    flags = fcntl.fcntl(log.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(log.fileno(), fcntl.F_SETFL, flags | os.O_APPEND)
    return log


class Child:
    """One long-running child process that the trial kills, stops and restarts."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: str) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = append_only_log()
        self.starts = 0
        self.stopped = False
        #: Killed on purpose and not restarted yet (a dead child otherwise exited by itself).
        self.killed = False

    def start(self) -> None:
        self.log.write(f"--- start {self.starts + 1} at {time.time():.3f}\n".encode())
        self.log.flush()
        self.proc = spawn(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
        self.starts += 1
        self.stopped = False
        self.killed = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash or the OOM killer would."""
        self.killed = True  # before the signal: a watchdog must not take it for a crash
        self._signal(signal.SIGCONT)  # a stopped group must not stay stopped
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        self.stopped = False

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.stopped = False

    def close(self, grace: float = 10.0, *, keep_log: bool = False) -> None:
        """SIGTERM the group, SIGKILL what is left after ``grace``; close the log unless
        ``keep_log``."""
        if self.proc is not None:
            self.resume()
            if self.proc.poll() is None:
                self._signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=grace)
            # Pool processes that outlived their parent are still in the group.
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        if not keep_log:
            self.log.close()

    def read_log(self) -> bytes:
        if self.log.closed:
            return b""
        self.log.flush()
        self.log.seek(0)
        data = self.log.read()
        self.log.seek(0, os.SEEK_END)
        return data

    def tail(self, size: int = 2000) -> str:
        if self.log.closed:
            return ""
        self.log.flush()
        self.log.seek(0, os.SEEK_END)
        end = self.log.tell()
        self.log.seek(max(0, end - size))
        text = self.log.read().decode(errors="replace")
        self.log.seek(0, os.SEEK_END)
        return text
