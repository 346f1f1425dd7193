"""Strict conversion of parsed YAML into dataclasses: unknown keys and wrong types are errors naming the key.

Kept generic (dataclass fields + type hints) so every section, including TRL's ``GRPOConfig`` field list, is
validated by the same rules:
* an unknown key names the dotted path and suggests the closest valid key;
* a value of the wrong type names the dotted path, the expected type and the value;
* YAML 1.1 reads ``1e-6`` as a string; numeric strings are accepted for float fields for that reason only.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

from grpo_audio.recipe.errors import RecipeError


def suggest(key: str, valid: list[str], prefix: str = "") -> str:
    """A hint naming the closest valid key (with its dotted ``prefix``), or listing the valid keys."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {prefix + close[0]!r}?"
    return f"; valid keys: {', '.join(sorted(valid))}"


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


class _TypeMismatchError(Exception):
    pass


def convert(value: Any, tp: Any, path: str) -> Any:
    """Return ``value`` checked (and minimally coerced) against the annotation ``tp``; raise RecipeError."""
    try:
        return _convert(value, tp, path)
    except _TypeMismatchError:
        raise RecipeError(
            f"{path}: expected {type_name(tp)}, got {value!r} ({type(value).__name__})", key=path
        ) from None


def _convert(value: Any, tp: Any, path: str) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _TypeMismatchError
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except (_TypeMismatchError, RecipeError) as exc:
                errors.append(exc)
        if any(isinstance(e, RecipeError) for e in errors) and len(args) <= 2:
            raise next(e for e in errors if isinstance(e, RecipeError))
        raise _TypeMismatchError
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _TypeMismatchError
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _TypeMismatchError
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _TypeMismatchError
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {convert(k, key_tp, path): convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _TypeMismatchError
        return build_dataclass(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _TypeMismatchError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _TypeMismatchError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _TypeMismatchError from None
        raise _TypeMismatchError
    if tp is str:
        if isinstance(value, str):
            return value
        raise _TypeMismatchError
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _TypeMismatchError
    return value  # an annotation this checker does not understand (e.g. a TRL enum); TRL validates it


def build_dataclass(cls: type, data: dict, path: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data`` strictly; ``path`` is the dotted prefix for messages."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            prefix = f"{path}." if path else ""
            raise RecipeError(f"unknown key {where!r}{suggest(str(key), list(fields), prefix)}", key=where)
        kwargs[key] = convert(value, hints[key], where)
    try:
        return cls(**kwargs)
    except RecipeError:
        raise
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{path or 'recipe'}: {exc}") from None
