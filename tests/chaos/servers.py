"""Servers of the trial's own: Redis on free loopback ports, which it may restart at will."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

from .children import append_only_log, die_with_parent, spawn


def free_port() -> int:
    """A TCP port nobody listens on now (bind port 0 on loopback, read what we got)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """``redis-server`` without persistence on a free loopback port.

    A restart loses everything it held, as a broker restarted without persistence does:
    queued and unacknowledged task messages included.
    """

    def __init__(self, name: str) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server).")
        self.name = name
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] = append_only_log()
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, timeout: float = 2.0) -> Any:
        import redis

        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def start(self, wait: float = 10.0) -> None:
        argv = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", tempfile.gettempdir(),
        ]  # fmt: skip
        self.proc = spawn(
            argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if self.client(0.5).ping():
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: whatever it held is gone (it keeps nothing on disk)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, down: float) -> None:
        self.kill()
        time.sleep(down)
        self.start()
        self.restarts += 1

    def close(self) -> None:
        self.kill()
        self.log.close()
