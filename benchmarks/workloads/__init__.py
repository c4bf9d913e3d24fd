"""The workloads, by the name ``--only`` takes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .write import run_versioned, run_write


def _lazy(module: str, func: str) -> Callable[[Any, Any], None]:
    def run(cfg: Any, results: Any) -> None:
        import importlib

        getattr(importlib.import_module(f"{__name__}.{module}"), func)(cfg, results)

    return run


registry: dict[str, Callable[[Any, Any], None]] = {
    "write": run_write,
    "versioned": run_versioned,
    "peers": _lazy("peers", "run_peers"),
    "relay": _lazy("relay", "run_relay"),
    "concurrency": _lazy("relay", "run_concurrency"),
    "latency": _lazy("latency", "run_latency"),
    "scale": _lazy("scale", "run_scale"),
    "hotagg": _lazy("hotagg", "run_hotagg"),
    "asyncview": _lazy("asyncview", "run_asyncview"),
    "soak": _lazy("soak", "run_soak"),
    "rabbitmq": _lazy("rabbitmq", "run_rabbitmq"),
    "consumer": _lazy("consumer", "run_consumer"),
    "chaos": _lazy("chaos", "run_chaos"),
}
