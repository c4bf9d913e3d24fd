"""The chaos trial at CI size: the delivery promises (docs/guarantees.md) checked as a
ledger while processes die, stall and lose their connections, the broker restarts
empty, one relay's clock is off, operators redeliver beside the worker, and the writers
outrun the worker for a minute.

The engine is ``tests.chaos`` (``python -m benchmarks --only chaos --minutes N`` runs the
same trial longer). A failure prints the seed; ``UOW_CHAOS_SEED=<seed>`` replays its
schedule.
"""

from __future__ import annotations

import pytest
from django.db import connection

from tests.chaos.plan import Plan, seed_from_env
from tests.chaos.servers import redis_server_binary
from tests.chaos.trial import run_trial
from tests.conftest import CI


@pytest.mark.celery
@pytest.mark.postgres
@pytest.mark.timeout(900)
@pytest.mark.django_db(transaction=True)
def test_the_ledger_holds_through_faults_overload_and_a_skewed_clock() -> None:
    if redis_server_binary() is None:
        message = "the chaos trial starts Redis servers of its own: redis-server is not installed"
        if CI:
            pytest.fail(f"{message} (CI=true: a missing server is a failure, not a skip)")
        pytest.skip(message)
    plan = Plan.make(seed_from_env())
    report = run_trial(plan, connection.settings_dict["NAME"])
    print(report.text())
    print(report.faults_text())
    assert not report.harness, report.text()
    assert [v.check for v in report.violations] == [], report.text()
