"""Optional OpenTelemetry integration: a no-op unless ``opentelemetry`` is installed."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

try:  # pragma: no cover - depends on the environment
    from opentelemetry import propagate, trace

    _tracer: Any = trace.get_tracer("django_uow")
except ImportError:  # pragma: no cover
    propagate = None
    _tracer = None


def inject_trace_context(headers: dict[str, Any]) -> None:
    """Copy the current W3C trace context (``traceparent``...) into ``headers``, if any."""
    if propagate is None:
        return
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    headers.update(carrier)


@contextmanager
def span(name: str, headers: Mapping[str, Any] | None = None, **attributes: Any) -> Iterator[None]:
    """Open a span (child of the trace context in ``headers`` when given); no-op without OTel."""
    if _tracer is None:
        yield
        return
    context = propagate.extract(dict(headers)) if headers else None
    with _tracer.start_as_current_span(name, context=context, attributes=attributes):
        yield
