"""Named implementations of an extension point: support methods, pruning scores, head and neuron scorers.

    SCORES = Registry("score")

    @SCORES.register("weight", description="|W0|")
    def weight_score(...): ...

    SCORES.get("weight").fn(...)      # a clear error naming the choices for an unknown name
    SCORES.names()                    # what configs validate against and the CLI offers

Adding a method is one decorated function; configs, the command line and its help read the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Entry:
    """One registered implementation. ``needs``: data it reads beyond the model (e.g. "batches")."""

    name: str
    fn: Callable[..., Any]
    description: str = ""
    needs: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)  # facts about the entry its users read

    @property
    def needs_data(self) -> bool:
        return bool(self.needs)


class Registry:
    """A name → ``Entry`` table for one kind of thing (``what`` names it in error messages)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, description: str = "", needs: tuple[str, ...] = (), **options):
        """Decorator: register ``fn`` under ``name`` (its docstring's first line is the default description)."""

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            text = description or (fn.__doc__ or "").strip().splitlines()[0] if (description or fn.__doc__) else ""
            self._entries[name] = Entry(name, fn, text, tuple(needs), dict(options))
            return fn

        return add

    def remove(self, name: str) -> None:
        """Forget ``name`` (e.g. a method registered by a test)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; choose one of {', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def help(self) -> str:
        """'name: description; ...' for command-line help."""
        return "; ".join(f"{e.name}: {e.description}" if e.description else e.name for e in self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
