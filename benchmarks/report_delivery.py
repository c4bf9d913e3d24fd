"""Sections of the results page for the delivery workloads: hot aggregate and soak."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .harness import Results, Target


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def _target(results: Results, key: str) -> Target | None:
    return next((t for t in results.targets if t.key == key), None)


def _verdict(results: Results, key: str) -> str:
    target = _target(results, key)
    return "—" if target is None else f"**{target.verdict}**"


def _why(results: Results, key: str) -> list[str]:
    target = _target(results, key)
    return ["", f"Why it missed: {target.why}."] if target is not None and target.why else []


def hotagg_section(results: Results) -> list[str]:
    hot = results.meta.get("hotagg")
    if not hot:
        return []
    attempts = hot["attempts"] - hot["events"] - hot["failed"]
    lines = [
        "",
        "### Hot aggregate: 4 writers on one aggregate, no sweep",
        "",
        f"Measured {hot['measured']}: {hot['writers']} writer threads committed "
        f"{hot['events']} events on one aggregate in {hot['elapsed_s']} s "
        f"({hot['rate']} commits/s, {attempts} version-conflict retries, {hot['failed']} "
        f"commits that gave up), each unit of work with `retries`. "
        f'`RELAY_ON_COMMIT="celery"`, a real Celery worker ({hot["pool"]} ×4) on Redis, no '
        "beat and no `relay_outbox`: only the fast path delivers. Commit time is taken when "
        "the unit of work returns; the handler records when it ran." + _load(hot),
        "",
        "| delivered without a sweep | p50 | p95 | p99 | max | handled twice | "
        "target: all delivered, p95 < 1 s |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| {hot['delivered']} of {hot['events']} | {_ms(hot['p50_ms'])} | "
        f"{_ms(hot['p95_ms'])} | {_ms(hot['p99_ms'])} | {_ms(hot['max_ms'])} | "
        f"{hot['handled_twice']} | {_verdict(results, 'hotagg.p95')} |",
    ]
    if hot.get("relay_p50_ms") is not None:
        lines += [
            "",
            "Where the time goes (from the outbox's `dispatched_at`): commit → marked "
            f"dispatched p50 {_ms(hot['relay_p50_ms'])}, p95 {_ms(hot['relay_p95_ms'])}; "
            f"dispatched → handler ran p50 {_ms(hot['queue_p50_ms'])}, p95 "
            f"{_ms(hot['queue_p95_ms'])}."
            + (
                f" {hot['queued_at_last_commit']} tasks (relay and handler tasks) were queued "
                "for the worker at the last commit; the worker used "
                f"{hot['worker_cpu_share']:.0%} of one core from the first commit to the "
                "last handler."
                if "worker_cpu_share" in hot
                else ""
            ),
        ]
    return lines + _why(results, "hotagg.p95")


SERIES = [
    ("relay_lag_s", "relay lag: oldest pending event (s)"),
    ("consumer_lag", "consumer lag: deliveries published, not handled"),
    ("consumer_age_s", "oldest unhandled delivery (s)"),
    ("unhandled", "dispatched events whose handler effect is missing (ground truth)"),
    ("unhandled_age_s", "oldest of those, since dispatched (s)"),
    ("rss_relay_mib", "`relay_outbox` RSS (MiB)"),
    ("rss_worker_mib", "Celery worker RSS, children included (MiB)"),
]


def _load(meta: dict[str, Any]) -> str:
    load = meta.get("load_average")
    if not load:
        return ""
    return (
        f" The machine's 1-minute load average was {load[0]:g} at the start and {load[1]:g} "
        "at the end (2 cores, shared with PostgreSQL, Redis and anything else running)."
    )


def _counts(counts: dict[str, int] | int) -> str:
    if isinstance(counts, int):
        return str(counts)
    return ", ".join(f"{name} {n:,}" for name, n in sorted(counts.items())) or "none"


def _cell(value: Any) -> str:
    return "—" if value is None else f"{value:g}"


def soak_section(results: Results) -> list[str]:
    soak = results.meta.get("soak")
    if not soak:
        return []
    marks = soak["marks"]
    kills = ", ".join(f"{m['what']} at {m['t']:g} s" for m in marks)
    deadline = (
        f"`HANDLER_DEADLINE` = {soak['handler_deadline_s']:g} s"
        if soak["handler_deadline_s"]
        else "No `HANDLER_DEADLINE` (this version of django-uow has none)"
    )
    check = soak["consistency"]
    drained = (
        f"drained {soak['drained_after_s']:g} s after the writes stopped"
        if soak["drained_after_s"] is not None
        else f"not drained {soak['drain_bound_s']:g} s after the writes stopped"
    )
    lines = [
        "",
        "### Soak: steady writers, one SIGKILL of the worker and of the relay",
        "",
        f"Measured {soak['measured']}: {soak['writers']} writer processes deposited at "
        f"{soak['rate']:g} commits/s in all for {soak['seconds']:g} s into "
        f"{soak['wallets']} wallets (`@unit_of_work(retries=10)`, no on-commit fast path, "
        "`NOTIFY` on). A Celery worker (prefork ×2) ran the idempotent deposit handler; "
        "`manage.py relay_outbox` looped with LISTEN. Timeline: "
        f"{kills}. {deadline}. Consumer lag is measured as "
        f"{soak['consumer_lag_measured_as']}." + _load(soak),
        "",
        "| series, sampled every second | min | median | max |",
        "|---|---:|---:|---:|",
    ]
    for key, label in SERIES:
        s = soak["summary"].get(key)
        if s:
            lines.append(f"| {label} | {s['min']:g} | {s['median']:g} | {s['max']:g} |")
    lines += [
        "",
        f"**Consistency: {'PASS' if check['passed'] else 'MISS'}** ({drained}). "
        f"{check['committed_events']} deposit events committed"
        + (
            f" (the writers counted {check['writers_committed']})"
            if check["writers_committed"] is not None
            else ""
        )
        + f"; outbox rows by status: {_counts(check['by_status'])}; "
        f"{check['missing_effects']} never handled; {check['handled_twice']} handled more "
        f"than once; the handler's inbox rows by status: "
        f"{_counts(check.get('inbox_by_status', check['inbox_rows']))}; "
        f"{check['unbalanced_count']} of {check['wallets']} wallets whose ledger (built by "
        f"the handler) differs from the balance the writers committed (total "
        f"{check['total_ledger']:,} vs {check['total_balance']:,}).",
    ]
    lines += _why(results, "soak.consistency")
    lines += ["", *timeline_table(soak), "", "![Soak chart](img/soak.png)"]
    return lines


def timeline_table(soak: dict[str, Any]) -> list[str]:
    """Every ``step``-th second, plus each second at which something was done."""
    samples = soak["samples"]
    step = max(1, round(len(samples) / 24 / 5) * 5) if len(samples) > 30 else 1
    at = {round(m["t"]): m["what"] for m in soak["marks"]}
    lines = [
        "| t (s) | event | committed | handled | pending | relay lag (s) | consumer lag | "
        "oldest unhandled (s) | no effect yet | relay MiB | worker MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, s in enumerate(samples):
        what = at.get(round(s["t"]), "")
        if i % step and not what and i != len(samples) - 1:
            continue
        lines.append(
            f"| {s['t']:g} | {what} | {s['committed']} | {s['handled']} | {s['pending']} | "
            f"{s['relay_lag_s']:g} | {s['consumer_lag']} | {s['consumer_age_s']:g} | "
            f"{_cell(s.get('unhandled'))} | {_cell(s['rss_relay_mib'])} | "
            f"{_cell(s['rss_worker_mib'])} |"
        )
    return lines


def write_soak_chart(results: Results, path: Path) -> bool:
    soak = results.meta.get("soak")
    if not soak:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    samples = soak["samples"]
    t = [s["t"] for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(12.5, 7.5), sharex=True)
    panels = [
        (axes[0], [("relay_lag_s", "relay lag (s)"), ("consumer_age_s", "oldest unhandled (s)")]),
        (
            axes[1],
            [
                ("consumer_lag", "deliveries not handled"),
                ("unhandled", "events without effect"),
                ("pending", "pending events"),
            ],
        ),
        (axes[2], [("rss_relay_mib", "relay_outbox RSS (MiB)"), ("rss_worker_mib", "worker RSS")]),
    ]
    for ax, series in panels:
        for key, label in series:
            ax.plot(t, [s.get(key) for s in samples], label=label, linewidth=1.2)
        for mark in soak["marks"]:
            ax.axvline(mark["t"], color="grey", linewidth=0.7, linestyle="--")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0))
        ax.tick_params(labelsize=8)
    for mark in soak["marks"]:
        axes[0].text(mark["t"], axes[0].get_ylim()[1], f" {mark['what']}", fontsize=7,
                     rotation=90, va="top")  # fmt: skip
    axes[2].set_xlabel("seconds since the writers started", fontsize=9)
    axes[0].set_title(
        f"Soak: {soak['rate']:g} commits/s for {soak['seconds']:g} s, one SIGKILL of the "
        "worker and of the relay",
        fontsize=9,
        loc="left",
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
