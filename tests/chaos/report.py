"""What a trial found: violated checks with their evidence, fault counts, and a text form."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: Evidence lines printed per violated check (the count says how many there were).
EVIDENCE_LINES = 8


@dataclass
class Violation:
    """One check the library failed: what it promises, how often it broke, and proof."""

    check: str
    summary: str
    evidence: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"VIOLATED {self.check}: {self.summary}"]
        lines += [f"    {line}" for line in self.evidence[:EVIDENCE_LINES]]
        if len(self.evidence) > EVIDENCE_LINES:
            lines.append(f"    ... and {len(self.evidence) - EVIDENCE_LINES} more")
        return "\n".join(lines)


def violation(check: str, summary: str, evidence: list[str]) -> list[Violation]:
    """``[Violation]`` when there is evidence, else ``[]``."""
    return [Violation(check, summary, evidence)] if evidence else []


@dataclass
class Report:
    seed: int
    plan: str
    checks: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    harness: list[str] = field(default_factory=list)
    #: What happened that is nobody's promise here (a Celery worker's own crash...).
    notes: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    fault_errors: Counter[str] = field(default_factory=Counter)
    fault_lines: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    tails: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.violations and not self.harness

    def text(self, *, tails: bool = True) -> str:
        lines = ["== chaos trial", self.plan, f"wall clock: {self.seconds:.0f}s"]
        lines.append(
            "phases: " + ", ".join(f"{name} {secs:.0f}s" for name, secs in self.phases.items())
        )
        lines.append(
            "faults injected: "
            + (", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items())) or "none")
        )
        if self.fault_errors:
            lines.append(
                "operator tools that failed (broker down...): "
                + ", ".join(f"{kind} {n}" for kind, n in sorted(self.fault_errors.items()))
            )
        for key, value in self.stats.items():
            lines.append(f"{key}: {value}")
        lines.append(f"checks: {len(self.checks)}, violated: {len(self.violations)}")
        for name in self.checks:
            broken = [v for v in self.violations if v.check == name]
            lines.append(f"  {'FAIL' if broken else 'ok  '} {name}")
        for item in self.violations:
            lines.append(item.text())
        for note in self.notes:
            lines.append(f"NOTE {note}")
        for problem in self.harness:
            lines.append(f"HARNESS {problem}")
        if tails and not self.passed:
            for name, tail in self.tails.items():
                if tail.strip():
                    lines.append(f"-- last lines of {name}:")
                    lines += [f"   {line}" for line in tail.strip().splitlines()[-12:]]
        lines.append(f"seed {self.seed}: {'PASSED' if self.passed else 'FAILED'}")
        return "\n".join(lines)

    def faults_text(self) -> str:
        return "\n".join(self.fault_lines)
