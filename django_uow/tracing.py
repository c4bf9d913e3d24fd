"""Optional OpenTelemetry integration: a no-op unless ``opentelemetry-api`` is installed.

At ``record_event`` time the active W3C trace context (``traceparent``, ``tracestate``)
is copied into the event's headers, so the work a handler does later, in another
process, joins the trace of the request that caused it: ``span(name, headers)`` opens
a child of that context. The tracer is looked up on each call, so a tracer provider
configured after import (as OpenTelemetry's SDK setup usually is) is honoured.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - depends on the environment
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]

#: Instrumentation scope name of every span this package opens.
TRACER_NAME = "django_uow"


def enabled() -> bool:
    """Whether OpenTelemetry is importable (spans may still go to a no-op provider)."""
    return trace is not None


def inject_trace_context(headers: dict[str, Any]) -> None:
    """Copy the current W3C trace context (``traceparent``...) into ``headers``, if any."""
    if propagate is None:
        return
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    headers.update(carrier)


def _parent_context(headers: Mapping[str, Any] | None) -> Any:
    # Only a carrier that holds a trace context replaces the current one: extracting
    # from headers without it would start a new root and cut the current trace.
    if not headers or not headers.get("traceparent"):
        return None
    carrier = {k: str(v) for k, v in headers.items() if isinstance(v, str | int)}
    return propagate.extract(carrier)


@contextmanager
def span(
    name: str,
    headers: Mapping[str, Any] | None = None,
    *,
    kind: str = "internal",
    **attributes: Any,
) -> Iterator[Any]:
    """Open a span, the child of the trace context in ``headers`` when they carry one.

    ``kind`` is a ``SpanKind`` name (``"internal"``, ``"consumer"``, ``"producer"``...).
    Attributes whose value is ``None`` are left out. Yields the span (``None`` when
    OpenTelemetry is not installed). An exception leaving the block is recorded on the
    span, which is marked as an error, and propagates.
    """
    if trace is None:
        yield None
        return
    tracer = trace.get_tracer(TRACER_NAME)
    span_kind = getattr(trace.SpanKind, kind.upper())
    attrs = {k: v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(
        name, context=_parent_context(headers), kind=span_kind, attributes=attrs
    ) as current:
        yield current
