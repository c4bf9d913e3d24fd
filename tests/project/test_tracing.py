"""W3C trace context: stored in the headers at record time, continued by ``span()``."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.sdk", reason="needs opentelemetry-sdk (the dev extra)")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from django_uow import UnitOfWork
from django_uow.models import OutboxEvent
from django_uow.tracing import enabled, inject_trace_context, span
from tests.testapp.events import Pinged
from tests.testapp.models import Order

_EXPORTER = InMemorySpanExporter()


@functools.cache
def _install_exporter() -> None:
    # The global provider can be set once per process: reuse an SDK one if present. Once
    # only: pytest-django runs this module's database tests apart from the others, so a
    # module fixture would be set up twice and every span exported twice.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    _install_exporter()
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def traceparent_of(current: trace.Span) -> str:
    ctx = current.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def finished(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(spans) == 1, exporter.get_finished_spans()
    return spans[0]


@pytest.mark.django_db
def test_record_event_stores_the_active_trace_context(exporter: InMemorySpanExporter) -> None:
    assert enabled()
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("POST /orders") as request_span:
        with UnitOfWork():
            order = Order.objects.create(total=5)
            order.place()
            order.save()
        expected = traceparent_of(request_span)
    row = OutboxEvent.objects.get()
    assert row.headers["traceparent"] == expected


@pytest.mark.django_db
def test_no_trace_context_outside_a_span() -> None:
    with UnitOfWork() as uow:
        uow.record_event(Pinged(note="no trace"))
    assert "traceparent" not in OutboxEvent.objects.get().headers


def test_span_continues_the_trace_in_the_headers(exporter: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("tests")
    headers: dict[str, object] = {"schema_version": 1}
    with tracer.start_as_current_span("POST /orders") as request_span:
        inject_trace_context(headers)
    parent = request_span.get_span_context()

    # Later, elsewhere, with no active span: the handler's span joins the request's trace.
    with span("handle tests.TracingProbe", headers, kind="consumer", event_id="e1", none=None):
        pass
    child = finished(exporter, "handle tests.TracingProbe")
    assert child.parent is not None
    assert child.parent.span_id == parent.span_id
    assert child.context.trace_id == parent.trace_id
    assert child.kind == SpanKind.CONSUMER
    assert dict(child.attributes or {}) == {"event_id": "e1"}


def test_span_without_trace_headers_is_a_child_of_the_current_span(
    exporter: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer("tests")
    with (
        tracer.start_as_current_span("relay batch") as outer,
        span("publish tests.probe", {"x": 1}),
    ):
        pass
    inner = finished(exporter, "publish tests.probe")
    assert inner.parent is not None
    assert inner.parent.span_id == outer.get_span_context().span_id


def test_span_records_an_exception(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError, match="boom"), span("failing handler"):
        raise ValueError("boom")
    failed = finished(exporter, "failing handler")
    assert failed.status.status_code == StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]


def test_no_op_without_opentelemetry() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if it were not installed
        from django_uow import tracing
        headers = {"schema_version": 1}
        tracing.inject_trace_context(headers)
        assert headers == {"schema_version": 1}, headers
        with tracing.span("x", {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) as s:
            assert s is None
        assert not tracing.enabled()
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_without_a_tracer_provider_only_a_trace_to_continue_opens_a_span() -> None:
    # A fresh process: no tracer provider is configured there.
    code = textwrap.dedent(
        """
        from opentelemetry import trace
        from django_uow import tracing
        parent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        with tracing.span("x", {"schema_version": 1}) as s:
            assert s is None, s  # nothing would record it, nothing to carry on
            carried = {}
            tracing.inject_trace_context(carried)
            assert carried == {}, carried
        with tracing.span("x", {"traceparent": parent}) as s:
            assert s is not None and not s.is_recording()
            carried = {}
            tracing.inject_trace_context(carried)  # events recorded here continue it
            assert carried["traceparent"].startswith("00-" + "1" * 32), carried
            with tracing.span("inner", {}) as inner:
                assert inner is not None  # a trace is in force: it is carried on
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
