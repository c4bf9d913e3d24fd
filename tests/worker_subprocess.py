"""Run a Celery worker in a child process against a given (test) database.

Usage: python -m tests.worker_subprocess <database name> [worker options...]
Environment: UOW_HANDLER_SLEEP (seconds per OrderCancelled event), UOW_SEQUENCE_JITTER
(the ordered handler's longest random pause), UOW_HANDLER_BEHAVIOUR (what the OrderPlaced
handler does with every order: "raise" or "permanent"), UOW_REDIS_DB, UOW_CELERY_BROKER (a
broker URL instead of the Redis database, e.g. amqp://...), UOW_EXTRA (JSON merged into
DJANGO_UOW), UOW_PING_RECORDS_BACKEND=1 (the Pinged handler writes its database
session's backend pid as its effect's aggregate id), UOW_RECORD_ARRIVALS=1 (record each chaos handler task started:
``tests.chaos.arrivals``), and the other knobs of ``tests.child_settings``.
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
    if os.environ.get("UOW_EXTRA"):
        settings.DJANGO_UOW = {**settings.DJANGO_UOW, **json.loads(os.environ["UOW_EXTRA"])}
    import django

    django.setup()
    import django_uow.tasks  # noqa: F401 - registers the shared tasks
    from tests.celery_app import app
    from tests.testapp import handlers

    if os.environ.get("UOW_RECORD_ARRIVALS") == "1":
        from tests.chaos import arrivals

        arrivals.install()
    handlers.PING_RECORDS_BACKEND[0] = os.environ.get("UOW_PING_RECORDS_BACKEND") == "1"
    handlers.SLEEP[0] = float(os.environ.get("UOW_HANDLER_SLEEP", "0"))
    handlers.SEQUENCE_JITTER[0] = float(os.environ.get("UOW_SEQUENCE_JITTER", "0.005"))
    if behaviour := os.environ.get("UOW_HANDLER_BEHAVIOUR"):
        handlers.BEHAVIOUR["*"] = behaviour
    app.worker_main(["worker", *sys.argv[2:]])


if __name__ == "__main__":
    main()
