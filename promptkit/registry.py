"""One generic registry for every pluggable kind: adapters, metrics, loaders, datasets, aliases."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from promptkit.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lowercase names to objects, optionally imported lazily from ``"module:attribute"``.

    Lazy entries keep ``import promptkit`` fast: the module behind a name is imported the first
    time the name is looked up.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}

    def register(
        self, name: str, obj: T | None = None, *, lazy: str | None = None, overwrite: bool = False
    ) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; with no ``obj``, return a decorator.

        ``lazy="package.module:attr"`` defers the import until the name is first used.
        """
        key = name.lower()
        if not overwrite and (key in self._entries or key in self._lazy):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if lazy is not None:
            self._lazy[key] = lazy
            return lazy  # type: ignore[return-value]
        if obj is None:

            def decorator(target: T) -> T:
                self._entries[key] = target
                self._lazy.pop(key, None)
                return target

            return decorator
        self._entries[key] = obj
        self._lazy.pop(key, None)
        return obj

    def unregister(self, name: str) -> None:
        self._entries.pop(name.lower(), None)
        self._lazy.pop(name.lower(), None)

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key in self._entries:
            return self._entries[key]
        if key in self._lazy:
            module_name, _, attr = self._lazy[key].partition(":")
            module = importlib.import_module(module_name)
            if key not in self._entries:  # the module may have registered itself on import
                self._entries[key] = getattr(module, attr)
            return self._entries[key]
        raise UnknownNameError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(str(name).lower(), names, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        plural = self.kind + ("es" if self.kind.endswith("s") else "s")
        return f"Unknown {self.kind} {name!r}.{hint} Known {plural}: {', '.join(names)}."

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._lazy))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in (self._entries.keys() | self._lazy.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
