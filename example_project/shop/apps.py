from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created


def sqlite_wal(sender: Any, connection: Any, **kwargs: Any) -> None:
    """On SQLite, let readers and the writer work side by side (write-ahead log).

    In SQLite's default journal mode a commit waits for every open reader, and a reader
    that then wants to write is refused at once ("database is locked"); with a WAL only
    two writers collide. It is a property of the database file, so setting it on each
    new connection is cheap and idempotent.
    """
    if connection.vendor == "sqlite" and connection.settings_dict["NAME"] != ":memory:":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=WAL")


class ShopConfig(AppConfig):
    name = "example_project.shop"
    label = "shop"
    verbose_name = "Shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import handlers  # noqa: F401 - registers the event handlers

        connection_created.connect(sqlite_wal, dispatch_uid="shop_sqlite_wal")
