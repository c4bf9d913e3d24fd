"""The outbox: writing a commit's events with one INSERT (``writing``)."""
