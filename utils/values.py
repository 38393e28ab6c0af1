"""Whether a value has the type its annotation names, one of its choices and its range: the one test behind the
options' checker (options/base_options.py), a checkpoint's model settings (models/config.py) and a score mapping
file's fields (data/score_mapping.py)."""
from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from typing import Any

KINDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
LISTS = {bool: "true/false values", int: "integers", float: "finite numbers", str: "strings"}


def hint_of(f: dataclasses.Field) -> Any:
    """A dataclass field's annotation as a type (the options and ModelConfig are annotated with builtins only:
    ``int``, ``str | None``, ``tuple[int, ...]``; under ``from __future__ import annotations`` they are strings)."""
    return eval(f.type, {}) if isinstance(f.type, str) else f.type  # noqa: S307 - our own source's annotations


def _is(kind: type, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind) and not isinstance(value, bool)


def expected(hint: Any, value: Any, choices: Sequence | None = None, minimum: float | None = None,
             maximum: float | None = None, above: float | None = None, length: int | None = None) -> str | None:
    """What a value annotated ``hint`` (``int``, ``str | None``, ``tuple[int, ...]``: builtins only) expects instead
    of ``value``, or None when it fits: the type (JSON and Python say 32.0, "false" or None where a command line
    could not), and for each item ``choices`` and the range (``above``: a bound to exceed); a list of ``length``."""
    args = typing.get_args(hint)
    if value is None:
        return None if type(None) in args else "a value"
    kind = next((a for a in args if a is not type(None)), hint) if typing.get_origin(hint) is not tuple and args \
        else hint
    items = [value]
    if typing.get_origin(kind) is tuple:
        kind = typing.get_args(kind)[0]
        if not isinstance(value, (list, tuple)) or length is not None and len(value) != length:
            return f"a list of {f'{length} ' if length else ''}{LISTS[kind]}"
        items = list(value)
    for item in items:
        if not _is(kind, item):
            return KINDS[kind]
        if choices is not None and item not in choices:
            return f"one of {', '.join(map(str, choices))}"
        if above is not None and not item > above:
            return f"more than {above:g}"
        if (minimum is not None and item < minimum) or (maximum is not None and item > maximum):
            return f"{minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
    return None
