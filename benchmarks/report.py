"""Write the results: JSON, the generated section of docs/benchmarks.md, and the chart."""

from __future__ import annotations

import contextlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

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


def write_outputs(results: Results, cfg: Config, root: Path) -> None:
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
        return  # the published page and chart come from full runs only
    chart = root / "docs" / "img" / "benchmarks.png"
    if write_chart(results, chart):
        print(f"wrote {chart}")
    soak_chart = root / "docs" / "img" / "soak.png"
    if write_soak_chart(results, soak_chart):
        print(f"wrote {soak_chart}")
    page = root / "docs" / "benchmarks.md"
    write_page(page, render_markdown(results))
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


ORDER = ["write", "versioned", "relay", "concurrency", "latency", "hotagg", "soak", "scale"]


def ordered(results: Results) -> list[Any]:
    """Rows grouped by workload in suite order (peers beside what they compare with)."""
    rows = list(results.rows.values())
    return sorted(rows, key=lambda r: ORDER.index(r.workload) if r.workload in ORDER else 99)


def render_markdown(results: Results) -> str:
    meta = results.meta
    lines = [
        BEGIN,
        "",
        f"Run: {meta.get('started')} ({meta.get('mode')} mode, median of {meta.get('reps')} "
        f"repetitions, {meta.get('duration_s')} s in all) on {meta.get('machine')}."
        + (f" Workloads {meta['rerun']}." if meta.get("rerun") else ""),
        "",
        "### Results",
        "",
        "| workload | what | median | unit | × baseline | baseline |",
        "|---|---|---:|---|---:|---|",
    ]
    for row in ordered(results):
        if row.not_measured:
            lines.append(
                f"| {row.workload} | {row.label} | not measured: {row.not_measured} | | | |"
            )
            continue
        ratio = f"{row.ratio:.2f}×" if row.ratio is not None else ""
        base = results.rows.get(row.baseline or "")
        base_label = base.label if base is not None and base is not row else ""
        if base is row:
            base_label = "(this is the baseline)"
        note = f" ({row.note})" if row.note else ""
        lines.append(
            f"| {row.workload} | {row.label}{note} | {_fmt(row.value, row.unit)} | {row.unit} "
            f"| {ratio} | {base_label} |"
        )
    lines += [
        "",
        "### Targets",
        "",
        "| verdict | target | measured | why missed |",
        "|---|---|---|---|",
    ]
    for target in results.targets:
        lines.append(
            f"| **{target.verdict}** | {target.description} | {target.measured} | {target.why} |"
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
                ("write.c", "write.d", "versioned.uow", "relay.uow", "conc.", "latency.", "scale.")
            )
            else ("#e76f51" if r.key.startswith("peer") or ".peer" in r.key else "#8d99ae")
            for r in rows
        ]
        ax.barh(labels[::-1], ratios[::-1], color=colors[::-1])
        ax.axvline(1.0, color="black", linewidth=0.8)
        unit = rows[0].unit
        lower = "higher is better" if rows[0].higher_is_better else "lower is better"
        base = results.rows[baseline].label if baseline in results.rows else "baseline"
        ax.set_title(f"{workload} ({unit}, {lower}): ratio to «{base}»", fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
        for i, r in enumerate(rows[::-1]):
            ax.text(
                r.ratio,
                i,
                f" {r.ratio:.2f}× ({_fmt(r.value, r.unit)} {r.unit})",
                va="center",
                fontsize=7,
            )
        ax.set_xlim(0, max(ratios) * 1.45)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
