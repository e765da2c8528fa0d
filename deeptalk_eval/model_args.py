"""`--model-args k=v,...`: read by the types an adapter's constructor declares.

An adapter declares its arguments once, in its annotated `__init__` signature; every value
given as text is parsed by that declaration:

    str                     the text as given (`path=2024.10` stays "2024.10", `codec=no` stays "no")
    int, float              parsed; `3.5` is no int
    bool                    true/false, yes/no, on/off, 1/0
    X | None, Optional[X]   `none` is None, anything else is read as X
    no annotation           the text as given (so is a name only `**kwargs` takes)

A name the adapter does not take, a value its declaration cannot read, or an argument only
Python callers can give (a loaded model object) is a `UsageError` naming the adapter and
listing its arguments with their types. Python callers may pass typed values; they must fit
the declaration. What the constructor then raises is its own: a bug keeps its traceback.
"""
from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from deeptalk_eval.errors import UsageError
from deeptalk_eval.registry import nearest

TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0"}
TEXT_TYPES = (str, int, float, bool)  # the types a value given as text can be read as


def parse_model_args(text: str | None) -> dict[str, str]:
    """'k=v,k2=v2' -> {"k": "v", "k2": "v2"}: the values as given, typed later by `bind_model_args`."""
    args: dict[str, str] = {}
    for part in [p for p in (text or "").split(",") if p.strip()]:
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--model-args: {part!r} is not key=value")
        args[key.strip()] = value.strip()
    return args


def _members(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a declared type: `int | None` -> (int, NoneType); `str` -> (str,)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _type_name(annotation: Any) -> str:
    if annotation in (inspect.Parameter.empty, Any):
        return "str"
    return " | ".join("None" if m is type(None) else getattr(m, "__name__", str(m)) for m in _members(annotation))


def _expected(annotation: Any) -> str:
    """What a value of the declared type looks like, for an error: "an integer or none"."""
    words = {int: "an integer", float: "a number", bool: "a boolean (true/false)", type(None): "none"}
    return " or ".join(words.get(m, _type_name(m)) for m in _members(annotation))


def _from_text(text: str, annotation: Any) -> Any:
    """The value `text` stands for under `annotation`; ValueError when it stands for none."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return text
    members = _members(annotation)
    if type(None) in members and text.lower() == "none":
        return None
    if str in members:
        return text
    for m in members:
        if m is bool and text.lower() in TRUE | FALSE:
            return text.lower() in TRUE
        if m is int:
            try:
                return int(text)
            except ValueError:
                pass
        if m is float:
            try:
                return float(text)
            except ValueError:
                pass
    raise ValueError


def _fits(value: Any, annotation: Any) -> bool:
    """A Python caller's typed value against the declaration (classes the check cannot judge pass)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    for m in _members(annotation):
        if m is type(None):
            if value is None:
                return True
        elif m is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif m is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif not isinstance(m, type):
            return True
        else:
            try:
                if isinstance(value, m):
                    return True
            except TypeError:  # a Protocol without runtime checks
                return True
    return False


def _text_settable(annotation: Any) -> bool:
    return annotation in (inspect.Parameter.empty, Any) or any(m in TEXT_TYPES for m in _members(annotation))


def declared_args(cls: type) -> dict[str, tuple[Any, Any]]:
    """name -> (annotation, default) of the adapter's named keyword arguments."""
    params = inspect.signature(cls).parameters
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # a name imported for type checkers only: such an argument takes no text
        hints = {n: object for n, p in params.items() if p.annotation is not inspect.Parameter.empty}
    return {n: (hints.get(n, inspect.Parameter.empty), p.default) for n, p in params.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def describe_args(declared: dict[str, tuple[Any, Any]], takes_any: bool = False) -> str:
    """'path: str | None, batch: int, ...': the arguments a user can give as text."""
    shown = [f"{n}: {_type_name(a)}" for n, (a, _) in declared.items() if _text_settable(a)]
    if takes_any:
        shown.append("any other name (as text)")
    return ", ".join(shown) or "none"


def bind_model_args(cls: type, args: dict[str, Any], label: str) -> dict[str, Any]:
    """--model-args (text, or typed values from Python callers) -> the keyword arguments to
    build `cls` with, each read by its declared type. Raises UsageError for the user's mistakes."""
    declared = declared_args(cls)
    # an adapter that also takes **kwargs gets the names it does not declare as given
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls).parameters.values())
    takes = describe_args(declared, takes_any)
    bound: dict[str, Any] = {}
    for key, value in args.items():
        if key not in declared and takes_any:
            bound[key] = value
            continue
        if key not in declared:
            hint = nearest(key, list(declared))
            if key == "batch_size":  # the generation batch is a flag; a scorer's batch is its own argument
                hint = (" (requests per generate call: the --batch-size flag"
                        + ("; per loglikelihood pass: loglikelihood_batch_size=N" if "loglikelihood_batch_size"
                           in declared else "") + ")")
            raise UsageError(f"--model-args: model {label} has no argument {key!r}{hint}; it takes: {takes}")
        annotation = declared[key][0]
        if isinstance(value, str):
            if not _text_settable(annotation):
                raise UsageError(f"--model-args: model {label}: argument {key!r} takes a Python object "
                                 f"({_type_name(annotation)}), not text; it takes: {takes}")
            try:
                value = _from_text(value, annotation)
            except ValueError:
                raise UsageError(f"--model-args: model {label}: {key}={value!r} is not {_expected(annotation)}; "
                                 f"it takes: {takes}") from None
        elif not _fits(value, annotation):
            raise UsageError(f"--model-args: model {label}: {key}={value!r} is not {_expected(annotation)}; "
                             f"it takes: {takes}")
        bound[key] = value
    missing = [n for n, (_, default) in declared.items() if default is inspect.Parameter.empty and n not in bound]
    if missing:
        raise UsageError(f"--model-args: model {label} needs {', '.join(f'{n}=...' for n in missing)}; "
                         f"it takes: {takes}")
    return bound
