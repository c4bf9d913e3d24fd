"""Benchmarks of django-uow against hand-written baselines and peer libraries.

Not part of the test suite: ``make bench`` (``python -m benchmarks``) and
``make bench-quick`` (``python -m benchmarks --quick``).
"""
