"""Read-only admin for the outbox and the inbox, with "retry now", "mark failed" and "Re-run".

Importing this module registers both admins (``autodiscover`` imports it). The list pages
stay fast on large tables: no full count, no per-row query, filters whose choices come
from code (not ``SELECT DISTINCT``), exact-match search on indexed columns, and big JSON
columns left out of the list query.
"""

from __future__ import annotations

from .deliveries import ProcessedEventAdmin
from .outbox import EventsCausedAdminMixin, OutboxEventAdmin

__all__ = ["EventsCausedAdminMixin", "OutboxEventAdmin", "ProcessedEventAdmin"]
