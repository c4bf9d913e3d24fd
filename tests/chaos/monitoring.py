"""Checks on what the trial sampled while it ran: the broker, and what the library said.

- ``queue bound`` (overload and catch-up): the broker holds at most the owed deliveries
  plus what the relays may have sent and not recorded yet: two relays, one batch each,
  every event of it with all its handlers (``2 x BATCH_SIZE x 3``), plus the tasks the
  worker has finished and not acknowledged yet (its concurrency, 2).
- ``consumer lag`` (overload and catch-up), for ``outbox_status --json``, the health
  view and the Prometheus collector: the lag each reports stays within 10 % of the true
  age of the oldest missing effect, plus ``LAG_TOLERANCE`` seconds: the reported lag
  counts from a delivery's first publish and the true age from the commit (the relay's
  latency, within a LISTEN wake-up and one batch), and the reports are read up to a
  fraction of a second after the tables.
- ``health: MAX_CONSUMER_LAG`` (overload and catch-up): the health view answers 503
  while the true lag is clearly over the threshold, 200 while it is clearly under.
- ``failed handler deliveries`` (every phase): with ``MAX_FAILED = 0`` the health view
  answers 503 while a handler delivery is failed; ``outbox_status`` and a gauge of the
  collector count them as the table does.
- ``monitoring at the end``: once settled, every number the three report matches the
  tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .plan import Knobs
from .probes import Reported, Tables

LAG_TOLERANCE = 2.0
LAG_SHARE = 0.10
HANDLERS_PER_EVENT = 3
RELAYS = 2
WORKER_CONCURRENCY = 2
MEASURED_PHASES = ("overload", "catch-up")


def queue_slack(knobs: Knobs) -> int:
    return RELAYS * knobs.batch_size * HANDLERS_PER_EVENT + WORKER_CONCURRENCY


def _measured(samples: Sequence[Reported]) -> list[Reported]:
    return [s for s in samples if s.phase in MEASURED_PHASES]


def _at(sample: Reported, t0: float) -> str:
    return f"+{sample.t - t0:.1f}s ({sample.phase})"


def check_queue(samples: Sequence[Reported], knobs: Knobs, t0: float) -> list[str]:
    slack = queue_slack(knobs)
    evidence = []
    for s in _measured(samples):
        if s.queued is None or s.unacked is None:
            continue
        depth = s.queued + s.unacked
        owed = s.truth("owed")[1]
        if depth > owed + slack:
            evidence.append(
                f"{_at(s, t0)}: {depth} task messages in the broker ({s.queued} queued, "
                f"{s.unacked} unacked) for {owed} owed deliveries (bound {owed + slack})"
            )
    return evidence


def _lag_ok(reported: float, low: float, high: float) -> bool:
    return (
        low * (1 - LAG_SHARE) - LAG_TOLERANCE <= reported <= high * (1 + LAG_SHARE) + LAG_TOLERANCE
    )


Source = Callable[[Reported], tuple[str, float] | None]
SOURCES: dict[str, Source] = {
    "outbox_status --json": lambda s: s.status_lag,
    "health view": lambda s: s.health_lag,
    "Prometheus collector": lambda s: s.metrics_lag,
}


def check_lag(samples: Sequence[Reported], t0: float) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    measured = _measured(samples)
    for name, source in SOURCES.items():
        evidence = []
        absent = [s for s in measured if source(s) is None]
        if absent:
            evidence.append(
                f"reports no consumer lag (no numeric field naming a consumer lag in seconds) "
                f"in {len(absent)} of {len(measured)} samples, e.g. {_at(absent[0], t0)} while "
                f"the true lag was {absent[0].truth('true_age')[1]:.1f}s"
            )
        for s in measured:
            got = source(s)
            if got is None:
                continue
            low, high = s.truth("true_age")
            if not _lag_ok(got[1], low, high):
                evidence.append(
                    f"{_at(s, t0)}: {got[0]} = {got[1]:.1f}s, true age of the oldest missing "
                    f"effect {low:.1f}-{high:.1f}s ({s.before.owed} owed, {s.before.blocked} blocked)"
                )
        found[name] = evidence
    return found


def over(limit: float, low: float) -> bool:
    """Even the lowest lag the accuracy check accepts for a true lag of ``low`` is over."""
    return low * (1 - LAG_SHARE) - LAG_TOLERANCE > limit


def under(limit: float, high: float) -> bool:
    """Even the highest lag the accuracy check accepts for a true lag of ``high`` is under."""
    return high * (1 + LAG_SHARE) + LAG_TOLERANCE < limit


def check_health_lag(samples: Sequence[Reported], knobs: Knobs, t0: float) -> list[str]:
    """Past ``MAX_CONSUMER_LAG`` by more than the accuracy allows: 503; under it by as
    much (and nothing failed): 200. In between, either answer is right."""
    limit = knobs.max_consumer_lag
    evidence = []
    for s in _measured(samples):
        low, high = s.truth("true_age")
        failed = s.truth("failed_deliveries")[1] + s.truth("failed_events")[1]
        status = s.health.get("status")
        if over(limit, low) and s.health_code != 503:
            evidence.append(
                f"{_at(s, t0)}: true consumer lag {low:.1f}-{high:.1f}s is over MAX_CONSUMER_LAG "
                f"{limit:g}s; health answered {s.health_code} {status!r}"
            )
        elif under(limit, high) and failed <= knobs.max_failed and s.health_code != 200:
            evidence.append(
                f"{_at(s, t0)}: true consumer lag {low:.1f}-{high:.1f}s is under MAX_CONSUMER_LAG "
                f"{limit:g}s and nothing failed; health answered {s.health_code}: "
                f"{s.health.get('problems')}"
            )
    return evidence


def check_failed(samples: Sequence[Reported], knobs: Knobs, t0: float) -> list[str]:
    evidence = []
    with_failed = [s for s in samples if s.truth("failed_deliveries")[0] > knobs.max_failed]
    silent = [s for s in with_failed if s.health_code != 503]
    if silent:
        s = silent[0]
        evidence.append(
            f"health answered {s.health_code} {s.health.get('status')!r} in {len(silent)} of "
            f"{len(with_failed)} samples with failed handler deliveries over MAX_FAILED "
            f"{knobs.max_failed}, e.g. {_at(s, t0)} with {s.truth('failed_deliveries')[0]} failed"
        )
    for s in samples:
        low, high = s.truth("failed_deliveries")
        count = s.status.get("handler_failures", {}).get("count")
        if count is None or not low <= count <= high:
            evidence.append(
                f"{_at(s, t0)}: outbox_status counts {count} failed handler deliveries, the "
                f"table {low}-{high}"
            )
    gauges = [(s, s.metrics_failed) for s in samples]
    if samples and all(g is None for _, g in gauges):
        evidence.append(
            "the Prometheus collector has no gauge of failed handler deliveries (names: "
            f"{sorted({name for name, _, _ in samples[0].metrics})})"
        )
    for s, gauge in gauges:
        if gauge is not None:
            low, high = s.truth("failed_deliveries")
            if not low <= gauge[1] <= high:
                evidence.append(f"{_at(s, t0)}: {gauge[0]} = {gauge[1]:g}, the table {low}-{high}")
    return evidence


def _expected_code(t: Tables, knobs: Knobs) -> int | None:
    """What health must answer for ``t``; None when the lag is too near the threshold."""
    if t.failed_deliveries + t.failed_events > knobs.max_failed:
        return 503
    if over(knobs.max_consumer_lag, t.true_age):
        return 503
    if under(knobs.max_consumer_lag, t.true_age):
        return 200
    return None


def check_end(final: Reported, knobs: Knobs) -> list[str]:
    """Every number of the three reports against the tables, once nothing moves."""
    t = final.after
    evidence = []

    def compare(what: str, got: object, want: object) -> None:
        if got != want:
            evidence.append(f"{what} is {got!r}; the tables say {want!r}")

    status = final.status
    counts = status.get("counts", {})
    compare("outbox_status counts.pending", counts.get("pending"), t.pending)
    compare("outbox_status counts.failed", counts.get("failed"), t.failed_events)
    consumer = status.get("consumer_lag", {})
    compare("outbox_status consumer_lag.owed", consumer.get("owed"), t.owed)
    compare("outbox_status consumer_lag.blocked", consumer.get("blocked"), t.blocked)
    compare(
        "outbox_status handler_failures.count",
        status.get("handler_failures", {}).get("count"),
        t.failed_deliveries,
    )
    code = _expected_code(t, knobs)
    if code is not None:
        compare("health status code", final.health_code, code)
    compare("health pending", final.health.get("pending"), t.pending)
    compare(
        "metric django_uow_outbox_pending",
        final.gauge("django_uow_outbox_pending"),
        float(t.pending),
    )
    compare(
        "metric django_uow_outbox_failed",
        final.gauge("django_uow_outbox_failed"),
        float(t.failed_events),
    )
    for name, source in SOURCES.items():
        got = source(final)
        if got is not None and not _lag_ok(got[1], t.true_age, t.true_age):
            evidence.append(f"{name} {got[0]} is {got[1]:.1f}s; the true lag is {t.true_age:.1f}s")
    gauge = final.metrics_failed
    if gauge is not None:
        compare(f"metric {gauge[0]}", gauge[1], float(t.failed_deliveries))
    return evidence
