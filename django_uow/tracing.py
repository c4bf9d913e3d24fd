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


def _nothing_to_trace(headers: Mapping[str, Any] | None) -> bool:
    """No tracer provider is configured and there is no trace to continue.

    A span opened then would be the no-op API's invalid span: it records nothing and
    puts no trace context in force, so it is not opened at all (a handler run skips
    that work). With a trace context in ``headers`` or in force, the no-op span still
    carries it on to the events recorded inside, so it is opened.
    """
    return (
        isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        and not (headers and headers.get("traceparent"))
        and not trace.get_current_span().get_span_context().is_valid
    )


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
    OpenTelemetry is not installed, or when no tracer provider is configured and there
    is no trace to continue). An exception leaving the block is recorded on the
    span, which is marked as an error, and propagates.
    """
    if trace is None or _nothing_to_trace(headers):
        yield None
        return
    tracer = trace.get_tracer(TRACER_NAME)
    span_kind = getattr(trace.SpanKind, kind.upper())
    attrs = {k: v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(
        name, context=_parent_context(headers), kind=span_kind, attributes=attrs
    ) as current:
        yield current
