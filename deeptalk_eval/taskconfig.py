"""Task YAML: loading, validation, docs and requests.

A task file is read with `yaml.safe_load` semantics plus one tag, `!function module.attr`,
resolved relative to the YAML's folder, and one key, `include:`, naming templates whose
fields are the defaults (see docs/task-format.md). Every error names the file, the line
and the field, so a user can fix a task without reading this code.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from deeptalk_eval.api import Audio, GenerationOptions, Request
from deeptalk_eval.errors import UsageError

KINDS = ("generate", "stream", "lm_eval")
# Leaderboard columns "reported:<benchmark>/<metric>" hold published figures; no task may take the name.
RESERVED_PREFIX = "reported:"
# The field a multi-split hub load adds to every doc: the split it came from.
HUB_SPLIT_FIELD = "hub_split"
MODALITIES_IN = ("text", "speech")
MODALITIES_OUT = ("text", "speech", "both")
CHANNELS = ("text", "speech")
AGGREGATIONS = ("mean", "median", "p50", "p90", "p95", "sum", "ratio")
ON_FAILURE = ("zero", "one", "exclude")
# The key naming a task file's templates; templates' own names start with "_" (never tasks).
INCLUDE = "include"
TEMPLATE_PREFIX = "_"
TOP_LEVEL = {
    "task", "group", "version", "description", "kind", "dataset", "input", "system", "prompt",
    "output", "generation", "scorers", "metrics", "lm_eval",
}


class TaskConfigError(UsageError):
    """A task file (or one of its samples) is unusable. The message says where and why."""


# -- YAML with line numbers and !function ---------------------------------------------


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
    c = _Checker(path, lines)
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


def config_sha256(config: dict[str, Any]) -> str:
    """The identity of a task's content: sha256 of the canonical JSON of its resolved fields
    (as results files record them), whatever files they are spread over."""
    text = json.dumps(_json_safe(config), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# -- the config -----------------------------------------------------------------------


@dataclass
class ScorerSpec:
    name: str
    channel: str = "text"
    args: dict[str, Any] = field(default_factory=dict)
    prefix: str = ""


@dataclass
class MetricSpec:
    name: str
    aggregation: str = "mean"
    on_failure: str = "zero"
    numerator: str | None = None
    denominator: str | None = None
    higher_is_better: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class TaskConfig:
    name: str
    version: Any
    path: Path
    config_sha256: str
    raw: dict[str, Any]  # the resolved fields, templates merged in, without `include`
    includes: list[Path] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    description: str = ""
    kind: str = "generate"
    # dataset
    data_path: Path | None = None
    hub: dict[str, Any] | None = None
    example: dict[str, Any] | None = None  # one doc as the hub serves it: checked offline by `validate`
    id_field: str = "id"
    process_docs: FunctionRef | None = None
    # input / output
    input_modality: str = "text"
    text_field: str | None = None
    audio_field: str | None = None
    tts: dict[str, Any] | None = None
    system: str | None = None
    prompt: str | None = None
    output: str = "text"
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    scorers: list[ScorerSpec] = field(default_factory=list)
    metrics: list[MetricSpec] = field(default_factory=list)
    lm_eval: dict[str, Any] | None = None

    @property
    def needs_asr(self) -> bool:
        return any(s.channel == "speech" for s in self.scorers)

    def record(self) -> dict[str, Any]:
        """What results files keep of this task (JSON-safe)."""
        return {"task": self.name, "version": self.version, "file": str(self.path),
                "includes": [str(p) for p in self.includes],
                "config_sha256": self.config_sha256, "config": _json_safe(self.raw)}


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, FunctionRef):
        return f"!function {x.spec}"
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


class _Checker:
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


def load_task(path: str | Path) -> TaskConfig:
    """Read and validate one task file. Raises `TaskConfigError` naming file, line, field."""
    path = Path(path).resolve()
    if not path.is_file():
        raise TaskConfigError(f"{path}: task file not found")
    source = read_task_file(path)
    data = source.data
    c = _Checker(path, source.lines, source.origin)
    if not isinstance(data, dict):
        raise c.fail((), f"a task file is a mapping of fields, got {type(data).__name__}")
    c.no_unknown(data, (), TOP_LEVEL)
    name = c.get(data, (), "task", str, required=True)
    if name.startswith(RESERVED_PREFIX):
        raise c.fail(("task",), f"task names may not start with {RESERVED_PREFIX!r}: leaderboard columns of "
                                f"that prefix hold published figures (results/reported/)")
    if "version" not in data:
        raise c.fail((), "required field 'version' is missing")
    groups = data.get("group") or []
    groups = [groups] if isinstance(groups, str) else groups
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise c.fail(("group",), "expected a group name or a list of names")
    if any(g.startswith(RESERVED_PREFIX) for g in groups):
        raise c.fail(("group",), f"group names may not start with {RESERVED_PREFIX!r} (published figures' columns)")
    kind = c.get(data, (), "kind", str, default="generate", choices=KINDS)
    cfg = TaskConfig(
        name=name, version=data["version"], path=path,
        config_sha256=config_sha256(data), raw=data, includes=source.includes, groups=groups,
        description=c.get(data, (), "description", str, default=""), kind=kind,
        system=c.get(data, (), "system", str), prompt=c.get(data, (), "prompt", str),
        output=c.get(data, (), "output", str, default="text", choices=MODALITIES_OUT),
    )

    if kind == "lm_eval":
        block = c.get(data, (), "lm_eval", dict, required=True)
        c.no_unknown(block, ("lm_eval",), {"tasks", "include_path", "num_fewshot", "limit"})
        tasks = block.get("tasks")
        tasks = [tasks] if isinstance(tasks, str) else tasks
        if not tasks or not isinstance(tasks, list):
            raise c.fail(("lm_eval", "tasks"), "a list of lm-eval task names is required")
        inc = c.get(block, ("lm_eval",), "include_path", str)
        if inc is not None and not (path.parent / inc).is_dir():
            raise c.fail(("lm_eval", "include_path"), f"folder {path.parent / inc} does not exist")
        cfg.lm_eval = {"tasks": tasks, "include_path": str((path.parent / inc).resolve()) if inc else None,
                       "num_fewshot": c.get(block, ("lm_eval",), "num_fewshot", int),
                       "limit": c.get(block, ("lm_eval",), "limit", (int, float))}
        _load_metrics(c, data, cfg, required=False)
        return cfg

    ds = c.get(data, (), "dataset", dict, required=True)
    c.no_unknown(ds, ("dataset",), {"path", "hub", "id_field", "process_docs", "example"})
    rel = c.get(ds, ("dataset",), "path", str)
    cfg.data_path = (path.parent / rel).resolve() if rel else None
    cfg.hub = c.get(ds, ("dataset",), "hub", dict)
    if cfg.hub is not None:
        c.no_unknown(cfg.hub, ("dataset", "hub"), {"path", "name", "split", "revision"})
        c.get(cfg.hub, ("dataset", "hub"), "path", str, required=True)
        split = cfg.hub.get("split")
        if split is not None and not (isinstance(split, str) and split.strip() or (
                isinstance(split, list) and split and all(isinstance(x, str) and x.strip() for x in split))):
            raise c.fail(("dataset", "hub", "split"), f"a split name, a list of split names or '*' "
                                                      f"(every split), got {split!r}")
    if cfg.data_path is None and cfg.hub is None:
        raise c.fail(("dataset",), "give 'path' (a local data file) or 'hub' (an online dataset)")
    cfg.example = c.get(ds, ("dataset",), "example", dict)
    if cfg.example is not None and cfg.hub is None:
        raise c.fail(("dataset", "example"), "an example doc documents a hub dataset's fields; this task has no 'hub'")
    cfg.id_field = c.get(ds, ("dataset",), "id_field", str, required=True)
    cfg.process_docs = c.get(ds, ("dataset",), "process_docs", FunctionRef)
    if cfg.process_docs is not None:
        # Import the hook now: a broken hook is a task-file error, and hook modules may
        # register the task's own scorers.
        try:
            cfg.process_docs.resolve()
        except Exception as e:
            raise c.fail(("dataset", "process_docs"), f"!function {cfg.process_docs.spec}: "
                                                      f"{type(e).__name__}: {e}") from None

    inp = c.get(data, (), "input", dict, required=True)
    c.no_unknown(inp, ("input",), {"modality", "text_field", "audio_field", "tts"})
    cfg.input_modality = c.get(inp, ("input",), "modality", str, default="text", choices=MODALITIES_IN)
    cfg.text_field = c.get(inp, ("input",), "text_field", str)
    cfg.audio_field = c.get(inp, ("input",), "audio_field", str)
    cfg.tts = c.get(inp, ("input",), "tts", dict)
    if cfg.tts is not None:
        c.no_unknown(cfg.tts, ("input", "tts"), {"engine", "voice", "sample_rate", "seed"})
    if cfg.input_modality == "speech" and not (cfg.audio_field or (cfg.tts and cfg.text_field)):
        raise c.fail(("input",), "speech input needs 'audio_field', or 'tts' with 'text_field'")
    if cfg.prompt is None and cfg.text_field and cfg.input_modality == "text":
        cfg.prompt = "{" + cfg.text_field + "}"

    gen = c.get(data, (), "generation", dict, default={})
    try:
        cfg.generation = GenerationOptions.from_dict(gen)
    except (ValueError, TypeError) as e:
        raise c.fail(("generation",), str(e)) from None

    scorers = c.get(data, (), "scorers", list, required=True)
    for i, s in enumerate(scorers):
        w = ("scorers", i)
        if not isinstance(s, dict):
            raise c.fail(w, "each scorer is a mapping with at least 'name'")
        c.no_unknown(s, w, {"name", "channel", "args", "prefix"})
        cfg.scorers.append(ScorerSpec(
            name=c.get(s, w, "name", str, required=True),
            channel=c.get(s, w, "channel", str, default="text", choices=CHANNELS),
            args=c.get(s, w, "args", dict, default={}),
            prefix=c.get(s, w, "prefix", str, default="")))
    if any(s.channel == "speech" for s in cfg.scorers) and cfg.output == "text":
        raise c.fail(("output",), "a scorer reads the speech channel but the task asks for output: text")
    _load_metrics(c, data, cfg, required=True)
    return cfg


def _load_metrics(c: _Checker, data: dict, cfg: TaskConfig, required: bool) -> None:
    metrics = c.get(data, (), "metrics", list, required=required, default=[])
    for i, m in enumerate(metrics):
        w = ("metrics", i)
        if not isinstance(m, dict):
            raise c.fail(w, "each metric is a mapping with at least 'name'")
        c.no_unknown(m, w, {"name", "aggregation", "on_failure", "numerator", "denominator", "higher_is_better"})
        spec = MetricSpec(
            name=c.get(m, w, "name", str, required=True),
            aggregation=c.get(m, w, "aggregation", str, default="mean", choices=AGGREGATIONS),
            on_failure=c.get(m, w, "on_failure", str, default="zero", choices=ON_FAILURE),
            numerator=c.get(m, w, "numerator", str), denominator=c.get(m, w, "denominator", str),
            higher_is_better=c.get(m, w, "higher_is_better", bool))
        if spec.aggregation == "ratio" and not (spec.numerator and spec.denominator):
            raise c.fail(w, "aggregation 'ratio' needs 'numerator' and 'denominator'")
        if any(x.name == spec.name for x in cfg.metrics):
            raise c.fail(w + ("name",), f"metric {spec.name!r} is declared twice")
        cfg.metrics.append(spec)


# -- docs -----------------------------------------------------------------------------


def read_data_file(path: Path) -> list[dict[str, Any]]:
    """Docs from a local JSONL / JSON (a list of objects) / CSV file."""
    if not path.is_file():
        raise TaskConfigError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise TaskConfigError(f"{path}: unknown data file type {suffix!r} (use .jsonl, .json or .csv)")
    text = read_user_text(path, "data file")
    if suffix == ".jsonl":
        docs = []
        # split on "\n" only: JSON strings may hold U+2028 and friends, which splitlines() splits on
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TaskConfigError(f"{path}:{n}: not valid JSON: {e.msg}") from None
            if not isinstance(docs[-1], dict):
                raise TaskConfigError(f"{path}:{n}: a sample must be a JSON object, got {type(docs[-1]).__name__}")
    elif suffix == ".json":
        try:
            docs = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskConfigError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    else:
        docs = list(csv.DictReader(io.StringIO(text, newline="")))
    if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
        raise TaskConfigError(f"{path}: expected a list of objects (one per sample)")
    return docs


def load_docs(cfg: TaskConfig, online: bool = False) -> list[dict[str, Any]]:
    """The task's docs: the local file (offline default) or the hub dataset (online path)."""
    use_hub = cfg.hub is not None and (online or cfg.data_path is None or not cfg.data_path.is_file())
    if use_hub:
        hub = cfg.hub
        try:
            docs = load_hub_docs(hub)
        except Exception as e:  # offline, unknown id, wrong split...
            local = f" and the local file {cfg.data_path} is missing" if cfg.data_path else ""
            raise TaskConfigError(f"{cfg.path}: task {cfg.name!r}: cannot load hub dataset {hub['path']!r}"
                                  f"{local}: {type(e).__name__}: {e}") from None
        where = f"hub dataset {hub['path']}"
    else:
        if cfg.data_path is None:
            raise TaskConfigError(f"{cfg.path}: task {cfg.name!r} has no local data file; run with --online")
        docs = read_data_file(cfg.data_path)
        where = str(cfg.data_path)
    return _processed(cfg, docs, where)


def multi_split(hub: dict[str, Any]) -> bool:
    """A hub block naming several splits ("*" or a list): docs then carry HUB_SPLIT_FIELD."""
    split = hub.get("split", "test")
    return split == "*" or isinstance(split, list)


def load_hub_docs(hub: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a hub dataset (the online path). `split` may be one name, a list of names
    (concatenated in that order) or "*" (every split of the config, in the hub's order); with
    several splits each doc gets HUB_SPLIT_FIELD = the split it came from."""
    import datasets  # only on the online path

    split = hub.get("split", "test")
    args = (hub["path"], hub.get("name"))
    if not multi_split(hub):
        return [dict(row) for row in datasets.load_dataset(*args, split=split, revision=hub.get("revision"))]
    loaded = datasets.load_dataset(*args, revision=hub.get("revision"))
    names = list(loaded.keys()) if split == "*" else split
    missing = [n for n in names if n not in loaded]
    if missing:
        raise ValueError(f"split(s) {missing} not in {hub['path']!r} config {hub.get('name')!r}; "
                         f"it has {list(loaded.keys())}")
    return [{**dict(row), HUB_SPLIT_FIELD: n} for n in names for row in loaded[n]]


def example_docs(cfg: TaskConfig) -> list[dict[str, Any]]:
    """The task's `dataset.example` (one doc as the hub serves it) through the same
    processing as hub docs: `validate` checks a hub-only task with it, offline."""
    if cfg.example is None:
        raise TaskConfigError(f"{cfg.path}: task {cfg.name!r} has no dataset.example")
    doc = dict(cfg.example)
    if cfg.hub is not None and multi_split(cfg.hub):
        split = cfg.hub.get("split")
        doc.setdefault(HUB_SPLIT_FIELD, split[0] if isinstance(split, list) else "example")
    return _processed(cfg, [doc], f"{cfg.path}: dataset.example")


def _processed(cfg: TaskConfig, docs: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """`process_docs` applied, then every doc checked for a unique id."""
    if cfg.process_docs is not None:
        try:
            docs = list(cfg.process_docs.resolve()(docs))
        except Exception as e:
            raise TaskConfigError(f"{cfg.path}:{cfg.process_docs.line}: process_docs "
                                  f"{cfg.process_docs.spec} failed: {type(e).__name__}: {e}") from e
    seen: dict[str, int] = {}
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise TaskConfigError(f"{where}: sample #{i} is a {type(d).__name__}, not an object")
        if cfg.id_field not in d or d[cfg.id_field] in (None, ""):
            raise TaskConfigError(f"{where}: sample #{i} has no id field {cfg.id_field!r}")
        sid = str(d[cfg.id_field])
        if sid in seen:
            raise TaskConfigError(f"{where}: duplicate sample id {sid!r} (samples #{seen[sid]} and #{i})")
        seen[sid] = i
    return docs


def sample_id(cfg: TaskConfig, doc: dict[str, Any]) -> str:
    return str(doc[cfg.id_field])


# -- requests -------------------------------------------------------------------------


class SampleInputError(ValueError):
    """One sample's input is unusable (missing field, bad audio). The sample is recorded failed."""


def render_prompt(cfg: TaskConfig, doc: dict[str, Any]) -> str | None:
    if cfg.prompt is None:
        return None
    try:
        return cfg.prompt.format(**doc)
    except (KeyError, IndexError) as e:
        raise SampleInputError(f"prompt refers to field {e} that sample {sample_id(cfg, doc)!r} lacks") from None


def check_audio(audio: Audio, where: str) -> Audio:
    if audio.samples.size == 0:
        raise SampleInputError(f"{where}: audio is empty")
    if not np.isfinite(audio.samples).all():
        raise SampleInputError(f"{where}: audio contains NaN or inf")
    if audio.sample_rate <= 0:
        raise SampleInputError(f"{where}: audio has sample rate {audio.sample_rate}")
    return audio


def read_wav(path: Path) -> Audio:
    import soundfile as sf

    try:
        samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for unreadable files
        raise SampleInputError(f"{path}: cannot read audio: {e}") from None
    return Audio(samples.mean(axis=1), sr)  # mono: average the channels


def _synthesise(text: str, tts: dict[str, Any]) -> Audio:
    """Speak a doc's text with `deeptalk.speech.tts` (which caches what it synthesises)."""
    from deeptalk.speech.tts import synthesize

    out = synthesize(text, **tts)
    samples, sr = (out.samples, out.sample_rate) if hasattr(out, "samples") else out
    return Audio(samples, sr)


def build_request(cfg: TaskConfig, doc: dict[str, Any]) -> Request:
    """One Request for one doc. Raises `SampleInputError` naming the sample when unusable."""
    sid = sample_id(cfg, doc)
    where = f"task {cfg.name}, sample {sid!r}"
    text = render_prompt(cfg, doc)
    audio = None
    if cfg.input_modality == "speech":
        if cfg.audio_field and doc.get(cfg.audio_field) not in (None, ""):
            value = doc[cfg.audio_field]
            if isinstance(value, dict) and "array" in value:  # hub datasets' Audio feature
                audio = Audio(value["array"], value["sampling_rate"])
            else:
                base = cfg.data_path.parent if cfg.data_path else cfg.path.parent
                audio = read_wav((base / str(value)).resolve())
        elif cfg.tts and cfg.text_field:
            if doc.get(cfg.text_field) in (None, ""):
                raise SampleInputError(f"{where}: field {cfg.text_field!r} (text to speak) is missing")
            try:
                audio = _synthesise(str(doc[cfg.text_field]), cfg.tts)
            except Exception as e:  # a TTS failure fails this sample, named, not the task
                raise SampleInputError(f"{where}: TTS {cfg.tts} failed: {type(e).__name__}: {e}") from e
        else:
            raise SampleInputError(f"{where}: no audio (field {cfg.audio_field!r} is missing)")
        check_audio(audio, where)
        # With speech input the spoken text is not handed over; the prompt template, when
        # given, is an instruction that goes with the audio.
        text = text if cfg.prompt is not None and cfg.prompt != "{" + str(cfg.text_field) + "}" else None
    return Request(id=sid, text=text, audio=audio, system=cfg.system,
                   output_modality=cfg.output, options=cfg.generation)

