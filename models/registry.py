"""A tiny name -> implementation registry (timm-style strategy lookup).

Blocks and shortcuts each have one registry; an architecture option such as
``shortcut: B`` is just a key into it. Registering a name twice is a programming error.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from models.config import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps option names to implementations; `kind` names the option in messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@BLOCKS.register("basic")``. Raises ValueError on a duplicate."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"(as {self._items[name]!r})")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"model.{self.kind}: got {name!r}; allowed: {self.names()}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)
