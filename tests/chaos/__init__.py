"""The chaos trial: a small app whose handlers keep a ledger, and the engine that runs it.

The app (``models``, ``events``, ``handlers``) gives the trial effects it can count: an
idempotent handler, an ordered one and one that fails on purpose for a while. The engine
(``plan``, ``servers``, ``children``, ``writers``, ``faults``, ``probes``, ``ledger``,
``trial``) runs writers, two relays and a real Celery worker against them while it
injects faults, then checks the ledger. ``tests/system/test_chaos.py`` runs it at CI size and
``python -m benchmarks --only chaos --minutes N`` runs the same trial longer.
"""
