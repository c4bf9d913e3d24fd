"""The seeded plan of one trial: sizes, rates, the skewed clock and the fault schedule.

Everything random in a trial is drawn here, or from a generator seeded from the plan's
seed (each writer has its own), so ``UOW_CHAOS_SEED`` replays the same schedule: the
same faults at the same offsets, the same units of work in the same order per writer.
Thread and process scheduling still vary from run to run.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any

SEED_ENV = "UOW_CHAOS_SEED"

#: Every kind of fault the driver injects (``tests.chaos.faults``).
KINDS = (
    "relay_kill",
    "relay_stop",
    "worker_kill",
    "worker_stop",
    "redis_restart",
    "pg_terminate",
    "redeliver_event",
    "redeliver_failed",
    "admin_rerun",
    "admin_rerun_failed",
    "admin_retry_now",
)


def seed_from_env() -> int:
    """``UOW_CHAOS_SEED`` when set, else a fresh seed (printed by the trial, so replayable)."""
    value = os.environ.get(SEED_ENV, "").strip()
    if not value:
        return random.SystemRandom().randrange(1, 2**31)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{SEED_ENV} must be an integer seed, not {value!r}.") from None


@dataclass(frozen=True)
class Knobs:
    """The DJANGO_UOW settings every process of the trial runs with (seconds)."""

    lease: float = 4.0
    handler_deadline: float = 6.0
    ordered_wait: float = 3.0
    batch_size: int = 50
    max_attempts: int = 10
    backoff: tuple[float, float] = (0.25, 1.5)
    #: The relays' loop interval: with LISTEN it is also the longest gap between sweeps.
    sweep_interval: float = 1.0
    #: HEALTH thresholds the trial holds the health view to.
    max_consumer_lag: float = 8.0
    max_failed: int = 0

    def django_uow(self) -> dict[str, Any]:
        return {
            "RELAY_ON_COMMIT": False,
            "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"],
            "NOTIFY": True,
            "LEASE": self.lease,
            "HANDLER_DEADLINE": self.handler_deadline,
            "ORDERED_WAIT": self.ordered_wait,
            "BATCH_SIZE": self.batch_size,
            "MAX_ATTEMPTS": self.max_attempts,
            "BACKOFF": list(self.backoff),
        }

    def health(self) -> dict[str, Any]:
        return {
            "MAX_LAG": None,
            "MAX_FAILED": self.max_failed,
            "MAX_CONSUMER_LAG": self.max_consumer_lag,
        }


@dataclass(frozen=True)
class Fault:
    """One fault: ``at`` seconds into the chaos phase; ``hold`` how long a process stays
    down or stopped (the broker: down); ``count`` how many rounds an operator races."""

    at: float
    kind: str
    target: str = ""
    hold: float = 0.0
    count: int = 0


@dataclass(frozen=True)
class Plan:
    """One trial: its seed, settings, phases (seconds, units of work per second) and faults."""

    seed: int
    knobs: Knobs = field(default_factory=Knobs)
    accounts: int = 6
    writers: int = 2
    # Overload: writers faster than the worker (each Ticked handler sleeps work_ms).
    overload_seconds: float = 60.0
    overload_rate: float = 20.0
    overload_work_ms: int = 80
    catchup_bound: float = 45.0
    # Chaos: a moderate write rate while the faults run.
    chaos_seconds: float = 75.0
    chaos_rate: float = 6.0
    settle_bound: float = 60.0
    #: The settle phase's hard limit while the backlog keeps shrinking.
    settle_cap: float = 600.0
    sample_every: float = 2.0
    # Shares of the units of work.
    flaky_share: float = 0.06
    rollback_share: float = 0.05
    savepoint_share: float = 0.08
    #: Failing runs of a flaky event: at least 4, past Celery's default of 3 retries.
    flaky_fail_times: tuple[int, int] = (4, 6)
    #: Chaos-phase units whose flaky event fails MAX_ATTEMPTS + 1 times (dead letters an
    #: operator must run again), one in this many flaky units.
    doomed_every: int = 4
    clock_skew: float = 0.0
    faults: tuple[Fault, ...] = ()

    @classmethod
    def make(cls, seed: int, *, minutes: float | None = None) -> Plan:
        """The CI-sized plan, or one whose chaos phase fills ``minutes`` in all."""
        rng = random.Random(seed)
        base = cls(seed=seed)
        chaos = base.chaos_seconds
        if minutes is not None:
            fixed = 20 + base.overload_seconds + 30 + 40  # start, overload, catch-up, settle
            chaos = max(base.chaos_seconds, minutes * 60 - fixed)
        # The skew exceeds the lease, so a clock read in the relay matters (|N| <= 10 s).
        skew = rng.choice((-1, 1)) * rng.uniform(base.knobs.lease + 1.0, 10.0)
        faults = schedule(rng, chaos, base.knobs)
        return cls(seed=seed, chaos_seconds=chaos, clock_skew=round(skew, 2), faults=faults)

    def describe(self) -> str:
        k = self.knobs
        lines = [
            f"seed {self.seed} (replay: {SEED_ENV}={self.seed})",
            f"relay-b clock skew {self.clock_skew:+.2f}s; LEASE {k.lease}s, HANDLER_DEADLINE "
            f"{k.handler_deadline}s, ORDERED_WAIT {k.ordered_wait}s, BATCH_SIZE {k.batch_size}, "
            f"MAX_ATTEMPTS {k.max_attempts}, BACKOFF {k.backoff}",
            f"overload {self.overload_seconds:.0f}s at {self.overload_rate:g} units/s "
            f"(handler sleeps {self.overload_work_ms} ms), chaos {self.chaos_seconds:.0f}s at "
            f"{self.chaos_rate:g} units/s with {len(self.faults)} faults",
        ]
        return "\n".join(lines)


def schedule(rng: random.Random, seconds: float, knobs: Knobs) -> tuple[Fault, ...]:
    """Faults spread over the chaos phase: every kind in each cycle of about 80 s, in a
    seeded order, at seeded offsets; the phase's last 8 s stay quiet."""
    faults: list[Fault] = []
    cycle = 80.0
    start = 3.0
    end = max(start + 1.0, seconds - 8.0)
    t = start
    while t < end:
        span = min(cycle, end - t)
        kinds = list(KINDS) + rng.sample(KINDS, k=min(len(KINDS), max(0, int(span / 10))))
        rng.shuffle(kinds)
        slots = sorted(rng.uniform(t, t + span) for _ in kinds)
        faults.extend(_fault(rng, at, kind, knobs) for at, kind in zip(slots, kinds, strict=True))
        t += span
    return tuple(faults)


def _fault(rng: random.Random, at: float, kind: str, knobs: Knobs) -> Fault:
    at = round(at, 2)
    if kind in ("relay_kill", "relay_stop"):
        target = rng.choice(("relay-a", "relay-b"))
        # A stop longer than the lease lets the other relay take the batch it holds.
        hold = rng.uniform(0.5, knobs.lease * 1.75)
        return Fault(at, kind, target, round(hold, 2))
    if kind in ("worker_kill", "worker_stop"):
        return Fault(at, kind, "worker", round(rng.uniform(0.5, 3.0), 2))
    if kind == "redis_restart":
        return Fault(at, kind, "broker", round(rng.uniform(0.3, 1.5), 2))
    if kind == "pg_terminate":
        return Fault(at, kind, rng.choice(("relay-a", "relay-b", "worker", "all")))
    if kind in ("redeliver_event", "admin_rerun", "admin_retry_now"):
        return Fault(at, kind, count=rng.randint(4, 12))
    return Fault(at, kind)
