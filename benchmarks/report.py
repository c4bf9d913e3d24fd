"""Write the results: JSON, the generated section of docs/benchmarks.md, and the chart."""

from __future__ import annotations

import contextlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from . import history
from .harness import Config, Results
from .report_delivery import hotagg_section, soak_section, write_soak_chart

BEGIN = "<!-- BEGIN GENERATED RESULTS (python -m benchmarks) -->"
END = "<!-- END GENERATED RESULTS -->"

LIBRARIES = [
    "django-uow",
    "Django",
    "psycopg",
    "celery",
    "kombu",
    "redis",
    "django-celery-outbox",
    "django-jaiminho",
    "django-outbox-pattern",
    "django-concurrency",
]


def versions(peer_versions: dict[str, str] | None = None) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    found.update(peer_versions or {})
    found["Python"] = platform.python_version()
    return found


def server_versions() -> dict[str, str]:
    from django.db import connection

    from .db import redis_client

    out = {}
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        out["PostgreSQL"] = cursor.fetchone()[0]
    try:
        out["Redis"] = redis_client().info("server")["redis_version"]
    except Exception as error:  # pragma: no cover - reported, not fatal
        out["Redis"] = f"unknown ({error})"
    return out


def load_results(path: Path) -> Results:
    """Results of an earlier run, from its JSON (``--render``)."""
    from .harness import Row, Target

    data = json.loads(path.read_text())
    results = Results()
    results.meta = data["meta"]
    for row in data["rows"]:
        results.rows[row["key"]] = Row(**row)
    for target in data["targets"]:
        target.pop("verdict", None)
        results.targets.append(Target(**target))
    return results


def write_outputs(
    results: Results,
    cfg: Config,
    root: Path,
    *,
    record: bool = True,
    history_runs: int | None = None,
) -> None:
    """Write the JSON; for a full run, its history entry, the page and the charts."""
    meta = results.meta
    if "versions" not in meta:
        meta["versions"] = {**versions(meta.get("peer_versions")), **server_versions()}
        meta["machine"] = f"{platform.machine()}, {_cpus()} CPU(s), {platform.system()}"
    data: dict[str, Any] = {
        "meta": meta,
        "rows": [row.as_dict() for row in results.rows.values()],
        "targets": [target.as_dict() for target in results.targets],
    }
    out_dir = root / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "latest-quick.json" if cfg.quick else "latest.json"
    (out_dir / name).write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"wrote {out_dir / name}")
    if cfg.quick:
        return  # the history, the published page and the chart come from full runs only
    if record:
        entry = history.record(results, cfg, root)
        if entry is not None:
            print(f"wrote {entry}")
    chart = root / "docs" / "img" / "benchmarks.png"
    if write_chart(results, chart):
        print(f"wrote {chart}")
    soak_chart = root / "docs" / "img" / "soak.png"
    if write_soak_chart(results, soak_chart):
        print(f"wrote {soak_chart}")
    page = root / "docs" / "benchmarks.md"
    runs = history_runs or history.RUNS
    write_page(page, render_markdown(results, history.load(root), runs))
    print(f"wrote {page}")


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("ms", "MiB"):
        return f"{value:,.2f}"
    return f"{value:,.0f}"


ORDER = [
    "write",
    "versioned",
    "relay",
    "concurrency",
    "rabbitmq",
    "consumer",
    "latency",
    "hotagg",
    "asyncview",
    "soak",
    "scale",
]


def ordered(results: Results) -> list[Any]:
    """Rows grouped by workload in suite order (peers beside what they compare with)."""
    rows = list(results.rows.values())
    return sorted(
        rows,
        key=lambda r: (ORDER.index(r.workload) if r.workload in ORDER else 99, "peer." in r.key),
    )


def _spread(row: Any) -> str:
    spread = row.spread
    return "" if spread is None else f"{spread[0]:.2f}–{spread[1]:.2f}"


def render_markdown(
    results: Results, runs_history: list[dict[str, Any]] | None = None, runs: int = history.RUNS
) -> str:
    meta = results.meta
    past = runs_history or []
    lines = [
        BEGIN,
        "",
        f"Run: {meta.get('started')} ({meta.get('mode')} mode, medians of up to "
        f"{meta.get('reps')} interleaved rounds, {meta.get('duration_s')} s in all) on "
        f"{meta.get('machine')}." + (f" Workloads {meta['rerun']}." if meta.get("rerun") else ""),
        "",
        f"History: {len(past)} full run(s) recorded in `benchmarks/results/history/`; the "
        f"columns *over runs* and *full runs passed* take the last {runs} runs that measured "
        "each row or target.",
        "",
        "### Results",
        "",
        "| workload | what | median | unit | × baseline | spread (rounds) | × over runs "
        "(min–max) | baseline |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    for row in ordered(results):
        if row.not_measured:
            lines.append(
                f"| {row.workload} | {row.label} | not measured: {row.not_measured} | | | | | |"
            )
            continue
        ratio = f"{row.ratio:.2f}×" if row.ratio is not None else ""
        base = results.rows.get(row.baseline or "")
        base_label = base.label if base is not None and base is not row else ""
        if base is row:
            base_label = "(this is the baseline)"
        over = history.row_summary(past, row.key, runs) if base is not row else None
        over_runs = f"{over.figures()}, {over.runs} run(s)" if over is not None else ""
        note = f" ({row.note})" if row.note else ""
        lines.append(
            f"| {row.workload} | {row.label}{note} | {_fmt(row.value, row.unit)} | {row.unit} "
            f"| {ratio} | {_spread(row)} | {over_runs} | {base_label} |"
        )
    lines += [
        "",
        "### Targets",
        "",
        "| verdict (this run) | target | this run | full runs passed | median (min–max) "
        "over runs | why missed (this run) |",
        "|---|---|---|---:|---|---|",
    ]
    for target in results.targets:
        summary = history.target_summary(past, target.key, runs)
        passed = f"{summary.passed} of {summary.runs}" if summary is not None else "—"
        figures = summary.figures() if summary is not None else "—"
        lines.append(
            f"| **{target.verdict}** | {target.description} | {target.measured} | {passed} "
            f"| {figures} | {target.why} |"
        )
    lines += hotagg_section(results) + soak_section(results)
    lines += ["", "### Versions", "", "| component | version |", "|---|---|"]
    for name, version in sorted(meta.get("versions", {}).items()):
        lines.append(f"| {name} | {version} |")
    failed = meta.get("failed_workloads")
    if failed:
        lines += ["", f"Workloads that raised an error in this run: {', '.join(failed)}."]
    lines += ["", "![Benchmark chart](img/benchmarks.png)", "", END]
    return "\n".join(lines)


def write_page(page: Path, generated: str) -> None:
    text = page.read_text() if page.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + generated + tail
    else:
        text = text.rstrip() + "\n\n" + generated + "\n"
    page.write_text(text)


def write_chart(results: Results, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -e '.[bench]')")
        return False
    groups: dict[tuple[str, str], list[Any]] = {}
    for row in ordered(results):
        if row.value is None or row.ratio is None:
            continue
        groups.setdefault((row.workload, row.baseline or ""), []).append(row)
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return False
    sizes = [len(v) for v in groups.values()]
    fig, axes = plt.subplots(
        len(groups),
        1,
        figsize=(11, 0.9 * len(groups) + 0.36 * sum(sizes)),
        gridspec_kw={"height_ratios": sizes},
    )
    if len(groups) == 1:
        axes = [axes]
    for ax, ((workload, baseline), rows) in zip(axes, groups.items(), strict=True):
        labels = [r.label for r in rows]
        ratios = [r.ratio for r in rows]
        colors = [
            "#2a9d8f"
            if r.key.startswith(
                (
                    "write.c",
                    "write.d",
                    "versioned.uow",
                    "relay.uow",
                    "conc.",
                    "consumer.uow",
                    "latency.",
                    "scale.",
                )
            )
            else ("#e76f51" if r.key.startswith("peer") or ".peer" in r.key else "#8d99ae")
            for r in rows
        ]
        # Error bars: the lowest and highest per-round ratio of each paired row.
        errors = [
            [r.ratio - r.spread[0] if r.spread else 0.0 for r in rows[::-1]],
            [r.spread[1] - r.ratio if r.spread else 0.0 for r in rows[::-1]],
        ]
        ax.barh(labels[::-1], ratios[::-1], color=colors[::-1], xerr=errors, capsize=2)
        ax.axvline(1.0, color="black", linewidth=0.8)
        unit = rows[0].unit
        lower = "higher is better" if rows[0].higher_is_better else "lower is better"
        base = results.rows[baseline].label if baseline in results.rows else "baseline"
        ax.set_title(f"{workload} ({unit}, {lower}): ratio to «{base}»", fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
        for i, r in enumerate(rows[::-1]):
            ax.text(
                r.spread[1] if r.spread else r.ratio,  # right of the error bar
                i,
                f" {r.ratio:.2f}× ({_fmt(r.value, r.unit)} {r.unit})",
                va="center",
                fontsize=7,
            )
        ax.set_xlim(0, max([*ratios, *(r.spread[1] for r in rows if r.spread)]) * 1.45)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
