"""Serve the test project with a real ASGI server (uvicorn) against a given (test) database.

Usage: python -m tests.asgi_subprocess <database name> <port>
Environment: UOW_EXTRA (JSON merged into DJANGO_UOW), UOW_ASGI_MIDDLEWARE=async (only
async-capable middleware: what an async project runs, and the benchmark), and the knobs
of ``tests.child_settings`` (UOW_PG_APPLICATION_NAME, UOW_CELERY_BROKER, UOW_LOG...).
Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import sys

#: Middleware that Django runs without a thread hop around an async view.
ASYNC_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_uow.middleware.EventContextMiddleware",
]


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import tests.settings as settings
    from tests.child_settings import configure

    database, port = sys.argv[1], int(sys.argv[2])
    configure(settings, database)
    if os.environ.get("UOW_EXTRA"):
        settings.DJANGO_UOW = {**settings.DJANGO_UOW, **json.loads(os.environ["UOW_EXTRA"])}
    if os.environ.get("UOW_ASGI_MIDDLEWARE") == "async":
        settings.MIDDLEWARE = ASYNC_MIDDLEWARE
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    import uvicorn
    from django.core.asgi import get_asgi_application

    application = get_asgi_application()
    if os.environ.get("UOW_CELERY_BROKER"):
        import tests.celery_app  # noqa: F401 - CeleryPublisher uses this app (the current one)
    uvicorn.run(
        application,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        loop="asyncio",
        http="h11",
    )


if __name__ == "__main__":
    main()
