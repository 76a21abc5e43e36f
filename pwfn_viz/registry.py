"""``Registry``: every choice pwfn_viz makes by name (methods, sigma inits, sigma joins, k-means
inits, models, datasets) is an entry in one of these, filled by a decorator, listed by the CLI.

Example:
    >>> joins = Registry("sigma join")
    >>> @joins.register("keep")
    ... def keep(sigma, taken_mu):
    ...     return sigma
    >>> joins.names()
    ['keep']
    >>> joins.get("kepp")
    Traceback (most recent call last):
    ...
    ValueError: unknown sigma join 'kepp' (did you mean 'keep'?); available: keep
"""
from __future__ import annotations

import difflib
import fnmatch
from typing import Iterator


class Registry:
    """Named entries of one kind; ``kind`` names them in error messages ("model", "dataset")."""

    def __init__(self, kind: str, hint: str = ""):
        self.kind = kind
        self.hint = hint          # appended to the unknown-name error, e.g. "or add one with register_init"
        self._entries: dict[str, object] = {}

    def register(self, name: str, entry: object = None, *, replace: bool = False):
        """``@registry.register("name")`` on a function or class, or ``register("name", obj)``."""
        def add(obj):
            if name in self._entries and not replace:
                raise ValueError(f"{self.kind} {name!r} is already registered; pick another name")
            self._entries[name] = obj
            return obj
        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        self.get(name)
        del self._entries[name]

    def get(self, name: str):
        """The entry called ``name``; an unknown name is a ValueError that lists what exists."""
        if name not in self._entries:
            raise self.unknown(name)
        return self._entries[name]

    def unknown(self, name: str, also=(), n: int = 1) -> ValueError:
        """The error for an unknown ``name``: up to ``n`` close names (from the entries and from
        ``also``, names accepted elsewhere, e.g. timm's models), then every entry, then the hint."""
        candidates = list(self._entries) + [c for c in also if c not in self._entries]
        close = difflib.get_close_matches(str(name), candidates, n=n)
        guess = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        hint = f"; {self.hint}" if self.hint else ""
        return ValueError(f"unknown {self.kind} {name!r}{guess}; available: {', '.join(self.names())}{hint}")

    def items(self) -> list[tuple[str, object]]:
        """(name, entry) pairs in name order."""
        return [(n, self._entries[n]) for n in self.names()]

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching ``pattern`` (fnmatch)."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str):
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


def check_choice(registry: Registry, name: str) -> str:
    """``name`` when ``registry`` has it, else the registry's clear error (for config validation)."""
    registry.get(name)
    return name


__all__ = ["Registry", "check_choice"]
