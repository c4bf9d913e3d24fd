"""Commit units of work in a child process against a given (test) database.

Usage: python -m tests.write_subprocess <database name> <count> [delay seconds]
Each unit records one ``orders.cancelled`` event (with ``delay`` when given) and commits. Environment: UOW_CLOCK_SKEW (seconds this
process's clock is off, see tests/child_settings.py), UOW_EXTRA (JSON merged into DJANGO_UOW).
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import tests.settings as settings
    from tests.child_settings import configure

    configure(settings, sys.argv[1])
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, **json.loads(os.environ.get("UOW_EXTRA", "{}"))}
    import django

    django.setup()
    from django_uow import UnitOfWork
    from tests.testapp.events import OrderCancelled

    delay = float(sys.argv[3]) if len(sys.argv) > 3 else None
    for i in range(int(sys.argv[2])):
        with UnitOfWork() as uow:
            uow.record_event(OrderCancelled(order_id=i, reason="written"), delay=delay)


if __name__ == "__main__":
    main()
