"""Secrets kept out of view: payload and header values masked wherever events are shown.

``DJANGO_UOW["REDACT"]`` lists key names and dotted paths; it extends ``DEFAULT_KEYS``
(it never replaces it, so adding a key cannot unmask a password). Matching is
case-insensitive:

- a name without a dot (``"ssn"``) masks that key at any depth, inside lists too;
- a dotted path (``"customer.card.number"``) masks that key only at that place, counted
  from the top of the payload (or of the headers); list items are stepped through, so
  ``"lines.secret"`` masks ``lines[i]["secret"]`` for every ``i``.

Only what is *shown* is masked: the stored row and what publishers send keep the real
values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..conf import uow_settings

#: Masked whatever the setting says.
DEFAULT_KEYS = (
    "authorization",
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "cookie",
    "set-cookie",
    "access_token",
    "refresh_token",
)
#: What a masked value shows.
MASK = "[redacted]"


class Redactor:
    """Masks the keys of one configuration; build it with ``redactor()``."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.names: set[str] = set()
        self.paths: set[tuple[str, ...]] = set()
        for entry in entries:
            entry = entry.strip().lower()
            if "." in entry:
                self.paths.add(tuple(entry.split(".")))
            elif entry:
                self.names.add(entry)

    def key_is_secret(self, key: str, path: tuple[str, ...] = ()) -> bool:
        """True when ``key`` (reached through ``path``) is masked."""
        lowered = key.lower() if isinstance(key, str) else str(key)
        return lowered in self.names or (*path, lowered) in self.paths

    def __call__(self, value: Any) -> Any:
        """A copy of ``value`` with the secret keys' values replaced by ``MASK``."""
        return self._walk(value, ())

    def _walk(self, value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            result = {}
            for key, item in value.items():
                if self.key_is_secret(key, path):
                    result[key] = MASK
                else:
                    lowered = key.lower() if isinstance(key, str) else str(key)
                    result[key] = self._walk(item, (*path, lowered))
            return result
        if isinstance(value, list | tuple):
            return [self._walk(item, path) for item in value]
        return value


def redactor() -> Redactor:
    """The redactor of the current settings (``DEFAULT_KEYS`` plus ``REDACT``)."""
    return Redactor((*DEFAULT_KEYS, *uow_settings.REDACT))


def redact(value: Any) -> Any:
    """``value`` (a payload or headers) with secret keys masked, for display."""
    return redactor()(value)


def redact_field(path: str, value: Any) -> Any:
    """``value`` if the payload field at ``path`` (``"a.b[0].c"``) may be shown, else MASK."""
    parts = tuple(p.split("[", 1)[0].lower() for p in path.split(".") if p.split("[", 1)[0])
    if not parts:
        return value
    return MASK if redactor().key_is_secret(parts[-1], parts[:-1]) else value
