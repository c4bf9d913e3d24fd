"""Run a child process with its clock off by ``UOW_CLOCK_SKEW`` seconds (may be negative).

``time.time`` and ``django.utils.timezone.now`` are shifted before Django starts, as on a
host whose clock is wrong; the database server's clock is untouched.
"""

from __future__ import annotations

import datetime
import os
import time


def apply_skew() -> float:
    """Shift this process's clock by ``UOW_CLOCK_SKEW`` seconds; return the skew."""
    skew = float(os.environ.get("UOW_CLOCK_SKEW", "0") or 0)
    if not skew:
        return 0.0
    real_time = time.time
    time.time = lambda: real_time() + skew

    from django.utils import timezone

    def skewed_now() -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=skew)

    timezone.now = skewed_now
    return skew
