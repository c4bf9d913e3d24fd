"""Subprocesses a workload starts, SIGKILLs, restarts and always stops, and their memory.

Each service runs in its own session (process group), so a kill reaches its children
(Celery's prefork pool) too. On Linux each child also gets ``PR_SET_PDEATHSIG``: if the
benchmark itself dies, its services die with it instead of running on.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Service:
    """One long-running subprocess (a Celery worker, a looping relay) of a workload."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.cmd = cmd
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.starts = 0

    def start(self) -> None:
        self.log.write(f"--- start {self.starts + 1} at {time.time():.3f}\n".encode())
        self.log.flush()
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash or an OOM kill would."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the group, then SIGKILL what is left after ``timeout`` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None:
            # Pool children that outlived their parent are still in the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def rss_mib(self) -> float | None:
        """Resident memory of the process and all its descendants, in MiB."""
        if not self.alive() or self.pid is None:
            return None
        total = sum(_rss_kib(pid) for pid in descendants(self.pid))
        return round(total / 1024, 1) if total else None  # None: not yet (or no longer) mapped

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the process and its live descendants."""
        if not self.alive() or self.pid is None:
            return 0.0
        return sum(_cpu_seconds(pid) for pid in descendants(self.pid))

    def tail(self, size: int = 1500) -> str:
        self.log.flush()
        self.log.seek(0, os.SEEK_END)
        end = self.log.tell()
        self.log.seek(max(0, end - size))
        return self.log.read().decode(errors="replace")


@contextlib.contextmanager
def services(*items: Service) -> Iterator[tuple[Service, ...]]:
    """Stop (and close the log of) every service on exit, errors and SIGTERM included."""
    try:
        yield items
    finally:
        for item in items:
            with contextlib.suppress(Exception):
                item.stop()
            item.log.close()


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from the parent ids in ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the ppid follows the last ")".
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], [root]
    while stack and len(found) < 1000:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[-1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat; 12 and 13 after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
