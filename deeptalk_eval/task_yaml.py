"""Task files as YAML: `!function`, `include:` templates and the line of every field.

A task file is read with `yaml.safe_load` semantics plus one tag, `!function module.attr`,
resolved relative to the YAML's folder, and one key, `include:`, naming templates whose
fields are the defaults (see docs/task-format.md). `FieldChecker` turns a field path into
an error naming the file, the line and the field, so a user can fix a task without
reading this code.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deeptalk_eval.errors import UsageError

# The key naming a task file's templates; templates' own names start with "_" (never tasks).
INCLUDE = "include"
TEMPLATE_PREFIX = "_"


class TaskConfigError(UsageError):
    """A task file (or one of its samples) is unusable. The message says where and why."""


@dataclass(frozen=True)
class FunctionRef:
    """The value of a `!function module.attr` tag; `resolve()` imports it."""

    spec: str
    base_dir: str
    line: int

    def resolve(self) -> Callable[..., Any]:
        module_name, _, attr = self.spec.rpartition(".")
        if not module_name or not attr:
            raise ValueError(f"!function wants 'module.attr', got {self.spec!r}")
        module_file = Path(self.base_dir, *module_name.split(".")).with_suffix(".py")
        if module_file.is_file():
            # A private module name per file, so two task folders may both have hooks.py.
            key = "deeptalk_eval_hooks_" + hashlib.sha1(str(module_file).encode()).hexdigest()[:12]
            module = sys.modules.get(key)
            if module is None:
                spec = importlib.util.spec_from_file_location(key, module_file)
                module = importlib.util.module_from_spec(spec)
                sys.modules[key] = module
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        try:
            return getattr(module, attr)
        except AttributeError:
            raise ValueError(f"{module_name} has no attribute {attr!r}") from None


def _loader_class(base_dir: str) -> type:
    class TaskLoader(yaml.SafeLoader):
        pass

    def construct_function(loader: yaml.SafeLoader, node: yaml.Node) -> FunctionRef:
        return FunctionRef(loader.construct_scalar(node), base_dir, node.start_mark.line + 1)

    TaskLoader.add_constructor("!function", construct_function)
    return TaskLoader


def _line_index(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map each field path (("dataset", "path"), ("scorers", 0, "name"), ...) to its line."""
    out = {} if out is None else out
    out.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = prefix + (k.value,)
            out[key] = k.start_mark.line + 1
            _line_index(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, prefix + (i,), out)
    return out


def read_user_text(path: Path, what: str) -> str:
    """A task or data file's text; unreadable or non-UTF-8 files are the user's to fix, so
    they raise TaskConfigError naming the file (and, for bad bytes, the line)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TaskConfigError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")  # a BOM left by an editor is not an error
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TaskConfigError(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{data[e.start]:02x}); "
                              f"save it as UTF-8") from None


def read_yaml(path: Path, base_dir: Path | None = None) -> tuple[Any, dict[tuple, int]]:
    """Parse a task file; returns (data, field-path -> line). Syntax errors name the line.
    `!function` modules are looked up in `base_dir` (default: the file's folder)."""
    text = read_user_text(path, "task file")
    loader = _loader_class(str(base_dir or path.parent))(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise TaskConfigError(f"{path}{line}: malformed YAML: {e.problem or e}") from None
    finally:
        loader.dispose()
    return data, (_line_index(node) if node is not None else {})


def is_template(path: str | Path) -> bool:
    return Path(path).name.startswith(TEMPLATE_PREFIX)


@dataclass
class TaskSource:
    """A task file with its templates merged in: `lines` is the file's own line index,
    `origin` maps each top-level field to the file it was written in and that file's line
    index, so errors point at the right file."""

    data: Any
    lines: dict[tuple, int]
    origin: dict[str, tuple[Path, dict[tuple, int]]]
    includes: list[Path]


def read_task_file(path: Path) -> TaskSource:
    """The task file's mapping with its `include:` templates resolved (nested, in order,
    later ones and the file itself winning, one top-level field at a time, like lm-eval).
    A template's fields mean what they would mean written in the task file: relative paths
    and `!function` modules are the task file's, so the merged mapping alone defines the task."""
    path = path.resolve()
    return _merged(path, path.parent, (path,))


def _merged(path: Path, base_dir: Path, chain: tuple[Path, ...]) -> TaskSource:
    data, lines = read_yaml(path, base_dir)
    if not isinstance(data, dict) or INCLUDE not in data:
        return TaskSource(data, lines, {k: (path, lines) for k in data} if isinstance(data, dict) else {}, [])
    c = FieldChecker(path, lines)
    names = data.pop(INCLUDE)
    listed = isinstance(names, list)
    names = names if listed else [names]
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise c.fail((INCLUDE,), "a template file (relative to this file) or a list of them")
    merged = TaskSource({}, lines, {}, [])
    for i, name in enumerate(names):
        where = (INCLUDE, i) if listed else (INCLUDE,)
        template = (path.parent / name).resolve()
        if template in chain:
            cycle = " -> ".join(p.name for p in chain[chain.index(template):] + (template,))
            raise c.fail(where, f"include cycle: {cycle}")
        if not template.is_file():
            raise c.fail(where, f"template {template} not found")
        got = _merged(template, base_dir, chain + (template,))
        if not isinstance(got.data, dict):
            got_kind = "nothing" if got.data is None else type(got.data).__name__
            raise c.fail(where, f"template {template} is not a mapping of fields (got {got_kind})")
        merged.data.update(got.data)
        merged.origin.update(got.origin)
        merged.includes += [t for t in [template, *got.includes] if t not in merged.includes]  # a diamond: once
    merged.data.update(data)
    merged.origin.update({k: (path, lines) for k in data})
    return merged


class FieldChecker:
    """Field checks that raise `TaskConfigError` naming file, line and field. `origin` says
    which file (a template, or the task file itself) each top-level field was written in."""

    def __init__(self, path: Path, lines: dict[tuple, int],
                 origin: dict[str, tuple[Path, dict[tuple, int]]] | None = None):
        self.path, self.lines, self.origin = path, lines, origin or {}

    def fail(self, where: tuple, msg: str) -> TaskConfigError:
        path, lines = self.origin.get(where[0], (self.path, self.lines)) if where else (self.path, self.lines)
        # The nearest known line: the field itself, else its closest parent.
        for k in range(len(where), -1, -1):
            if where[:k] in lines:
                line = lines[where[:k]]
                break
        else:
            line = 1
        name = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in where).replace(".[", "[")
        return TaskConfigError(f"{path}:{line}: field '{name or '<top>'}': {msg}")

    def get(self, d: dict, where: tuple, key: str, types: type | tuple, required=False, default=None,
            choices: tuple | None = None):
        if key not in d or d[key] is None:
            if required:
                raise self.fail(where, f"required field '{key}' is missing")
            return default
        v = d[key]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in _as_tuple(types)):
            want = " or ".join(t.__name__ for t in _as_tuple(types))
            raise self.fail(where + (key,), f"expected {want}, got {type(v).__name__} {v!r}")
        if choices is not None and v not in choices:
            raise self.fail(where + (key,), f"{v!r} is not one of {list(choices)}")
        return v

    def no_unknown(self, d: dict, where: tuple, known: set[str]) -> None:
        extra = sorted(set(d) - known)
        if extra:
            import difflib

            hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else "")
                     for k in extra]
            raise self.fail(where + (extra[0],), f"unknown field(s) {', '.join(hints)}; known: {sorted(known)}")


def _as_tuple(t) -> tuple:
    return t if isinstance(t, tuple) else (t,)

