"""Settings of the example shop, configured through environment variables.

With nothing set it runs on a SQLite file next to this module and relays events
in-process. Set ``DATABASE_URL`` (e.g. ``postgres://postgres@127.0.0.1:5432/shop``)
and ``REDIS_URL`` or ``CELERY_BROKER_URL`` to run with PostgreSQL, a Celery worker and
beat; ``DEMO_SERVICES=1`` picks local defaults for all three.
"""

from datetime import timedelta
from pathlib import Path

import django
import environ

BASE_DIR = Path(__file__).resolve().parent
env = environ.Env()

DEMO_SERVICES = env.bool("DEMO_SERVICES", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="example-project-not-secret")
DEBUG = env.bool("DEBUG", default=True)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "example_project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "/static/"

_default_db = (
    "postgres://postgres@127.0.0.1:5432/django_uow_example"
    if DEMO_SERVICES
    else f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
)
DATABASES = {"default": env.db("DATABASE_URL", default=_default_db)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    # SQLite has one writer at a time: wait for the lock instead of failing at once.
    _options["timeout"] = 20
    if django.VERSION >= (5, 1):
        # Start each transaction as a writer (BEGIN IMMEDIATE): one that has read and then
        # writes would otherwise be refused at once with "database is locked".
        _options["transaction_mode"] = "IMMEDIATE"

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0" if DEMO_SERVICES else "")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
#: True when a broker is configured: events then go through Celery.
USE_CELERY = bool(CELERY_BROKER_URL)

if USE_CELERY:
    DJANGO_UOW = {
        "RELAY_ON_COMMIT": "celery",
        "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"],
        "BACKOFF": (0.5, 30.0),
    }
    if REDIS_URL:
        DJANGO_UOW["REDIS_URL"] = REDIS_URL
else:
    DJANGO_UOW = {
        "RELAY_ON_COMMIT": "inline",
        "PUBLISHERS": ["django_uow.publishers.InlinePublisher"],
        "BACKOFF": (0.05, 2.0),
    }

CELERY_TASK_ALWAYS_EAGER = False
CELERY_RESULT_BACKEND = None
# The safety net: relay whatever the on-commit fast path missed (only with a broker).
CELERY_BEAT_SCHEDULE = (
    {"relay-outbox": {"task": "django_uow.tasks.relay_outbox", "schedule": 2.0}}
    if USE_CELERY
    else {}
)
CELERY_BEAT_SCHEDULE_FILENAME = env.str(
    "CELERY_BEAT_SCHEDULE_FILENAME", default=str(BASE_DIR / "celerybeat-schedule")
)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_uow",
    "example_project.shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

UOW_LOG_LEVEL = env.str("UOW_LOG_LEVEL", default="WARNING")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler", "level": UOW_LOG_LEVEL}},
    "loggers": {
        "django_uow": {"handlers": ["console"], "level": UOW_LOG_LEVEL},
        # Refused orders are 409 responses: expected, not worth a warning each.
        "django.request": {"level": "ERROR"},
    },
}

# How long the demo waits for the relay and the handlers to finish.
DEMO_TIMEOUT = timedelta(seconds=env.int("DEMO_TIMEOUT", default=60))
