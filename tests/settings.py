"""Test settings: SQLite by default, PostgreSQL with UOW_DB=postgres, MariaDB with UOW_DB=mariadb.

Checkouts on one machine keep apart by default: the test database names and the Redis
database number carry a tag of the checkout's path (UOW_PG_TEST_DB, UOW_MARIADB_TEST_DB and
UOW_REDIS_DB set them outright).
"""

import hashlib
import os
from pathlib import Path

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DB_VENDOR = os.environ.get("UOW_DB", "sqlite")
PG_HOST = os.environ.get("UOW_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("UOW_PG_PORT", "5432"))
MARIADB_HOST = os.environ.get("UOW_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("UOW_MARIADB_PORT", "3306"))
#: Two checkouts' runs on one server must not share (and drop) one test database.
CHECKOUT_TAG = hashlib.sha256(str(Path(__file__).resolve().parents[1]).encode()).hexdigest()[:8]
TEST_DB = f"test_django_uow_{CHECKOUT_TAG}"
#: Redis databases a checkout may take: not 0, nor the benchmark's 6.
REDIS_DBS = (1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15)
REDIS_DB = int(os.environ.get("UOW_REDIS_DB", REDIS_DBS[int(CHECKOUT_TAG, 16) % len(REDIS_DBS)]))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"

if DB_VENDOR == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            # A child process (a relay under test) points at the test database by name.
            "NAME": os.environ.get("UOW_PG_NAME", "postgres"),
            "USER": "postgres",
            "HOST": PG_HOST,
            "PORT": PG_PORT,
            "TEST": {"NAME": os.environ.get("UOW_PG_TEST_DB", TEST_DB)},
        },
    }
elif DB_VENDOR == "mariadb":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": "test",
            "USER": "root",
            "PASSWORD": "",
            "HOST": MARIADB_HOST,
            "PORT": MARIADB_PORT,
            "OPTIONS": {"charset": "utf8mb4"},
            "TEST": {
                "NAME": os.environ.get("UOW_MARIADB_TEST_DB", TEST_DB),
                "CHARSET": "utf8mb4",
            },
        },
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("UOW_SQLITE_NAME", ":memory:"),
            "TEST": {"NAME": os.environ.get("UOW_SQLITE_TEST_NAME") or None},
        },
    }
# A database that is down (a closed loopback port): health and status tests read it.
DATABASES["down"] = {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": "down",
    "USER": "postgres",
    "HOST": "127.0.0.1",
    "PORT": 1,
    "OPTIONS": {"connect_timeout": 2},
}
DATABASES["other"] = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": ":memory:",
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_uow",
    "tests.testapp",
    "tests.quickstart",
    "tests.allocation",
    "tests.chaos",
    "tests.asyncapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_uow.middleware.EventContextMiddleware",
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

STATIC_URL = "/static/"

DJANGO_UOW = {
    "RELAY_ON_COMMIT": False,
    "PUBLISHERS": ["django_uow.publishers.InlinePublisher"],
    "REDIS_URL": REDIS_URL,
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {"django_uow": {"handlers": ["null"], "level": "INFO"}},
}
