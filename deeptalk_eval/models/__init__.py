"""The model adapters: each puts one model behind the `deeptalk_eval.api.SpokenModel`
interface — the reference DeepTalk (`deeptalk`) and the models it is compared with (the base
text LLM, a modular cascade, GLM-4-Voice, Qwen-Omni, Moshi). They are listed by name in
`deeptalk_eval.registry.BUILTIN_MODELS` and imported only when a run asks for them.

Adapters are built as `Class(**model_args)` where `--model-args k=v,...` gives strings;
the helpers below turn those strings into typed values with an error naming the argument
(a `UsageError`: the CLI prints it as one line and exits 2).
"""
from __future__ import annotations

from typing import Any

from deeptalk_eval.errors import UsageError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def to_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise UsageError(f"model arg {name}={value!r} is not a boolean (use true/false)")


def to_int(value: Any, name: str) -> int | None:
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise UsageError(f"model arg {name}={value!r} is not an integer") from None


def to_float(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"model arg {name}={value!r} is not a number") from None
