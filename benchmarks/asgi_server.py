"""The benchmark project under uvicorn: ``python -m benchmarks.asgi_server PORT``.

No middleware (both views pay the same, nothing), and ``CONN_MAX_AGE = 0``: under ASGI a
sync view runs on a thread of its request, so its connection cannot outlive the request;
the async units' threads are told the same. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    from benchmarks import settings

    settings.ROOT_URLCONF = "benchmarks.benchapp.urls"
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    settings.MIDDLEWARE = []
    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0
    import uvicorn
    from django.core.asgi import get_asgi_application

    uvicorn.run(
        get_asgi_application(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        lifespan="off",
        log_level="warning",
        access_log=False,
        loop="asyncio",
        http="h11",
    )


if __name__ == "__main__":
    main()
