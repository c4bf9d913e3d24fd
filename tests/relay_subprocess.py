"""Run ``manage.py relay_outbox`` in a child process against a given (test) database.

Usage: python -m tests.relay_subprocess <database name> [relay_outbox options...]
Environment: UOW_LEASE (seconds), UOW_HANDLER_SLEEP (seconds per OrderCancelled event),
UOW_HANDLER_ERROR=unstorable (the OrderPlaced handler raises text holding a lone
surrogate and a NUL byte), UOW_EXTRA (JSON merged into DJANGO_UOW), and the knobs of
``tests.child_settings`` (UOW_CELERY_BROKER: publish with that Celery broker,
UOW_CLOCK_SKEW, UOW_PG_APPLICATION_NAME, UOW_LOG). ``call_command`` runs no system
checks, like a worker or a script.
"""

from __future__ import annotations

import json
import os
import sys

#: Text from an external API that no database stores as it is.
UNSTORABLE = "upstream said \udcff then \x00 and stopped"


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import tests.settings as settings
    from tests.child_settings import configure

    configure(settings, sys.argv[1])
    settings.DJANGO_UOW = {
        **settings.DJANGO_UOW,
        "LEASE": float(os.environ.get("UOW_LEASE", "60")),
        "NOTIFY": True,
        **json.loads(os.environ.get("UOW_EXTRA", "{}")),
    }
    import django

    django.setup()
    from django.core.management import call_command

    from tests.testapp import handlers

    if os.environ.get("UOW_CELERY_BROKER"):
        import tests.celery_app  # noqa: F401 - CeleryPublisher uses this app (the current one)

    handlers.SLEEP[0] = float(os.environ.get("UOW_HANDLER_SLEEP", "0"))
    if os.environ.get("UOW_HANDLER_ERROR") == "unstorable":
        handlers.BEHAVIOUR["*"] = ValueError(UNSTORABLE)
    call_command("relay_outbox", *sys.argv[2:])


if __name__ == "__main__":
    main()
