"""A task's configuration: the validated fields of a task file (templates merged in).

`load_task` reads a task file (`task_yaml`) and checks every field against the task
format (docs/task-format.md); `config_sha256` is the task's content identity, which keys
cached responses and which results files record.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deeptalk_eval.api import GenerationOptions
from deeptalk_eval.task_yaml import FieldChecker, FunctionRef, TaskConfigError, read_task_file

KINDS = ("generate", "stream", "lm_eval")
# Leaderboard columns "reported:<benchmark>/<metric>" hold published figures; no task may take the name.
RESERVED_PREFIX = "reported:"
MODALITIES_IN = ("text", "speech")
MODALITIES_OUT = ("text", "speech", "both")
CHANNELS = ("text", "speech")
AGGREGATIONS = ("mean", "median", "p50", "p90", "p95", "sum", "ratio")
ON_FAILURE = ("zero", "one", "exclude")
TOP_LEVEL = {
    "task", "group", "version", "description", "kind", "dataset", "input", "system", "prompt",
    "output", "generation", "scorers", "metrics", "lm_eval",
}


# fields that change how answers are scored or described, never what a model is asked
SCORING_ONLY = frozenset({"scorers", "metrics", "description", "group"})


def config_sha256(config: dict[str, Any]) -> str:
    """The identity of a task's content: sha256 of the canonical JSON of its resolved fields
    (as results files record them), whatever files they are spread over."""
    text = json.dumps(_json_safe(config), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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
    def requests_sha256(self) -> str:
        """The identity of what the task asks a model (config_sha256 without the fields that only
        score or describe): it keys cached answers, so a new scorer or metric re-scores the
        answers a model already gave instead of asking again."""
        return config_sha256({k: v for k, v in self.raw.items() if k not in SCORING_ONLY})

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



def load_task(path: str | Path) -> TaskConfig:
    """Read and validate one task file. Raises `TaskConfigError` naming file, line, field."""
    path = Path(path).resolve()
    if not path.is_file():
        raise TaskConfigError(f"{path}: task file not found")
    source = read_task_file(path)
    data = source.data
    c = FieldChecker(path, source.lines, source.origin)
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


def _load_metrics(c: FieldChecker, data: dict, cfg: TaskConfig, required: bool) -> None:
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

