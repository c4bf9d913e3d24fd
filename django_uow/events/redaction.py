"""Secrets kept out of view: payload and header values masked wherever events are shown.

``DJANGO_UOW["REDACT"]`` lists key names and dotted paths; it extends ``DEFAULT_KEYS``
(it never replaces it, so adding a key cannot unmask a password). Matching is
case-insensitive:

- a name without a dot (``"ssn"``) masks that key at any depth, inside lists too;
- a dotted path (``"customer.card.number"``) masks that key only at that place, counted
  from the top of the payload (or of the headers); list items are stepped through, so
  ``"lines.secret"`` masks ``lines[i]["secret"]`` for every ``i``;
- a name or a path segment may be a glob (``"*secret*"``, ``"x-*-key"``, ``"card.*"``):
  ``*`` any run of characters, ``?`` one, ``[...]`` a set, as ``fnmatch`` reads them.
  The built-in list uses them, so ``client_secret`` and ``github_token`` are masked.

Only what is *shown* is masked: the stored row and what publishers send keep the real
values.
"""

from __future__ import annotations

import fnmatch
import functools
import re
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
    # Globs: any key that contains one of these words.
    "*password*",
    "*passwd*",
    "*secret*",
    "*token*",
    "*api_key*",
    "*apikey*",
    "*api-key*",
    "*private_key*",
    "*credential*",
    "*authorization*",
)
_GLOB = re.compile(r"[*?\[]")
#: What a masked value shows.
MASK = "[redacted]"


class Redactor:
    """Masks the keys of one configuration; build it with ``redactor()``."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.names: set[str] = set()
        self.paths: set[tuple[str, ...]] = set()
        name_globs: list[str] = []
        #: Dotted paths with a glob in some segment: one regex per segment.
        self.path_globs: list[tuple[re.Pattern[str], ...]] = []
        for entry in entries:
            entry = entry.strip().lower()
            if "." in entry:
                parts = tuple(entry.split("."))
                if any(_GLOB.search(part) for part in parts):
                    self.path_globs.append(tuple(_compiled(part) for part in parts))
                else:
                    self.paths.add(parts)
            elif _GLOB.search(entry):
                name_globs.append(fnmatch.translate(entry))
            elif entry:
                self.names.add(entry)
        # One alternation for all name globs: one match call per key, however many globs.
        self.name_glob = re.compile("|".join(name_globs)) if name_globs else None

    def key_is_secret(self, key: str, path: tuple[str, ...] = ()) -> bool:
        """True when ``key`` (reached through ``path``) is masked."""
        lowered = key.lower() if isinstance(key, str) else str(key)
        if lowered in self.names or (*path, lowered) in self.paths:
            return True
        if self.name_glob is not None and self.name_glob.match(lowered):
            return True
        full = (*path, lowered)
        return any(
            len(parts) == len(full)
            and all(part.match(step) for part, step in zip(parts, full, strict=True))
            for parts in self.path_globs
        )

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


def _compiled(glob: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(glob))


def redactor() -> Redactor:
    """The redactor of the current settings (``DEFAULT_KEYS`` plus ``REDACT``)."""
    return _redactor_of(tuple(uow_settings.REDACT))


@functools.lru_cache(maxsize=8)
def _redactor_of(entries: tuple[str, ...]) -> Redactor:
    # Built once per setting value: the globs compile to regexes.
    return Redactor((*DEFAULT_KEYS, *entries))


def redact(value: Any) -> Any:
    """``value`` (a payload or headers) with secret keys masked, for display."""
    return redactor()(value)


def redact_field(path: str, value: Any) -> Any:
    """The payload field at ``path`` (``"a.b[0].c"``) as it may be shown: MASK when its key
    is secret, else ``value`` with the secret keys inside it masked."""
    parts = tuple(p.split("[", 1)[0].lower() for p in path.split(".") if p.split("[", 1)[0])
    secret = redactor()
    if parts and secret.key_is_secret(parts[-1], parts[:-1]):
        return MASK
    return secret._walk(value, parts)
