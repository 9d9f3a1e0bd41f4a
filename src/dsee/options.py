"""Command-line options defined once, on the configuration dataclasses themselves.

    @dataclass
    class RunConfig:
        epochs: float = option(3.0, "passes over the training data", group="optimisation")

``add_options(parser, RunConfig)`` then adds ``--epochs`` (type, default and help from the field),
and ``values(args, RunConfig)`` collects the parsed values back as keyword arguments. The type
comes from the annotation: ``int``, ``float`` (finite), ``str``, ``bool`` (a switch), a list or
tuple of strings (comma-separated), each optionally ``| None``. ``choices`` may be a callable, so
that a registry's current names are offered (``SUPPORT_METHODS.names``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Callable, Iterable
from typing import Any

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "", *, flag: str | None = None, group: str | None = None,  # noqa: A002
           choices: Iterable[str] | Callable[[], Iterable[str]] | None = None, positive: bool = False,
           metavar: str | None = None, negative_flag: str | None = None, **field_kwargs) -> Any:
    """A dataclass field that is also a command-line option (see the module doc).

    ``positive``: numbers must be > 0 (counts, sizes); ``negative_flag``: for a bool that defaults
    to True, the switch that turns it off (e.g. "--no-eval-per-epoch").
    """
    meta = {"help": help, "flag": flag, "group": group, "choices": choices, "positive": positive,
            "metavar": metavar, "negative_flag": negative_flag}
    if default is _MISSING:
        return dataclasses.field(metadata={"cli": meta}, **field_kwargs)
    return dataclasses.field(default=default, metadata={"cli": meta}, **field_kwargs)


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_number(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be > 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def names(text: str) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; '' -> None."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


def _base_type(annotation: Any) -> Any:
    """int | None -> int; list[str] | None -> list."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        annotation = args[0]
    return typing.get_origin(annotation) or annotation


def cli_fields(cls: type) -> list[tuple[dataclasses.Field, dict, Any]]:
    """(field, its cli metadata, its base type) of every option field of ``cls``."""
    hints = typing.get_type_hints(cls)
    return [(f, f.metadata["cli"], _base_type(hints[f.name])) for f in dataclasses.fields(cls) if "cli" in f.metadata]


def add_options(parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = (),
                groups: dict[str, Any] | None = None, title: str | None = None) -> None:
    """Add every option field of ``cls`` (but ``exclude``) to ``parser``, grouped by their ``group``."""
    groups = groups if groups is not None else {}
    default_group = parser.add_argument_group(title) if title else parser
    for f, meta, kind in cli_fields(cls):
        if f.name in exclude:
            continue
        target = default_group
        if meta["group"]:
            target = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        default = None if f.default is _MISSING else f.default
        shown = default is not None and not isinstance(default, bool)  # (1 == True: a test by value hides 1 and 1.0)
        help_text = meta["help"] + (f" (default {default})" if shown else "")
        if kind is bool:
            if meta["negative_flag"]:  # default True: the negative switch, and the positive one as a no-op
                target.add_argument(meta["negative_flag"], dest=f.name, action="store_false", help=meta["help"])
                target.add_argument(flag, dest=f.name, action="store_true", help=argparse.SUPPRESS)
            else:
                target.add_argument(flag, dest=f.name, action="store_true", help=meta["help"])
            continue
        if kind in (list, tuple):
            parse = names
        elif kind is float:
            parse = positive_number(finite_float) if meta["positive"] else finite_float
        elif kind is int:
            parse = positive_number(int) if meta["positive"] else int
        else:
            parse = str
        choices = meta["choices"]
        if callable(choices):
            choices = choices()
        kwargs = {"dest": f.name, "type": parse, "default": default, "help": help_text, "metavar": meta["metavar"]}
        if choices is not None:
            kwargs["choices"] = list(choices)
        if not flag.startswith("-"):  # a positional argument, shown as ``flag``
            kwargs.pop("dest")
            kwargs["metavar"] = meta["metavar"] or flag.upper()
            target.add_argument(f.name, **kwargs)
            continue
        if f.default is _MISSING and f.default_factory is _MISSING:
            kwargs["required"] = True
        target.add_argument(flag, **kwargs)


def values(args: argparse.Namespace, cls: type, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The parsed values of ``cls``'s option fields, as keyword arguments for ``cls(...)``."""
    return {f.name: getattr(args, f.name) for f, _, _ in cli_fields(cls)
            if f.name not in exclude and hasattr(args, f.name)}


GIVEN = "_given"  # the attribute of parsed arguments that holds the options on the command line (``mark_given``)


def mark_given(parser: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace) -> argparse.Namespace:
    """Record in ``args`` which options ``argv`` actually holds, whatever their value (``--score weight`` is given
    even though ``weight`` is the default): ``argv`` parsed once more with every default suppressed."""
    actions = [a for a in parser._actions if a.dest != "help"]
    saved = [a.default for a in actions]
    try:
        for action in actions:
            action.default = argparse.SUPPRESS
        found = parser.parse_known_args(argv, argparse.Namespace())[0]
    finally:
        for action, default in zip(actions, saved):
            action.default = default
    setattr(args, GIVEN, set(vars(found)))
    return args


def was_given(args: argparse.Namespace, name: str, default: Any = None) -> bool:
    """Whether the option of field ``name`` was on the command line (``mark_given``), or else set to a value other
    than ``default``."""
    marked = getattr(args, GIVEN, None)
    if marked is not None:
        return name in marked
    return hasattr(args, name) and getattr(args, name) != default


def given(args: argparse.Namespace, cls: type, *, exclude: Iterable[str] = ()) -> list[str]:
    """The option flags of ``cls`` that the user set (on the command line, or to a value other than the default)."""
    out = []
    for f, meta, _ in cli_fields(cls):
        if f.name in exclude or not hasattr(args, f.name):
            continue
        if was_given(args, f.name, None if f.default is _MISSING else f.default):
            out.append(meta["flag"] or "--" + f.name.replace("_", "-"))
    return out
