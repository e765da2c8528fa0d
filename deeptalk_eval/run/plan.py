"""Preparation: everything that can be wrong with a run's input (names, `--model-args`,
task files, data files, scorer names, output folder) is found before anything runs and
raised as `UsageError` (or its subclass `TaskConfigError`): the CLI's exit status 2."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from deeptalk_eval.errors import UsageError
from deeptalk_eval.model_args import bind_model_args
from deeptalk_eval.registry import TaskIndex, model_class
from deeptalk_eval.results import safe_name
from deeptalk_eval.run.options import RunOptions, check_writable
from deeptalk_eval.scoring.base import get_scorer
from deeptalk_eval.task_config import TaskConfig
from deeptalk_eval.task_docs import load_docs
from deeptalk_eval.task_yaml import TaskConfigError


@dataclass
class Plan:
    """What `prepare` found: the tasks with their docs, and the adapter class."""

    options: RunOptions
    tasks: list[TaskConfig]
    docs: dict[str, list[dict[str, Any]]]
    model_cls: type
    index: TaskIndex
    # every task the command names: a `--processes` child runs some of them, and its results
    # file lists the groups of all (so that every part's groups are the whole run's)
    named: list[str] = field(default_factory=list)


def online_only(task: TaskConfig, opts: RunOptions) -> bool:
    """A task whose data exists only on a hub, in an offline run: skipped, and said so."""
    return task.data_path is None and task.hub is not None and not opts.online


def missing_capability(task: TaskConfig, model_cls: type) -> str | None:
    caps = model_cls.capabilities
    if task.kind == "lm_eval":
        return None if caps.loglikelihood else "loglikelihood"
    if task.kind == "stream" and not caps.streaming:
        return "streaming"
    if task.input_modality == "speech" and not caps.audio_in:
        return "audio_in"
    if task.input_modality == "text" and not caps.text_in:
        return "text_in"
    if task.output in ("text", "both") and not caps.text_out:
        return "text_out"
    if task.output in ("speech", "both") and not caps.audio_out:
        return "audio_out"
    return None


def prepare(opts: RunOptions) -> Plan:
    if opts.batch_size is not None and opts.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {opts.batch_size}")
    if opts.limit is not None and opts.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {opts.limit}")
    model_cls = model_class(opts.model, opts.model_path)
    opts = replace(opts, model_args=bind_model_args(model_cls, opts.model_args, opts.model_label))
    index = TaskIndex.scan(opts.include_paths)
    tasks = [index.load(name) for name in index.resolve(opts.tasks)]
    named = [t.name for t in tasks]
    if opts.stream_tasks is not None:  # one of `--processes`' child runs
        tasks = [t for t in tasks if (t.kind == "stream") == (opts.stream_tasks == "only")]
    docs: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        for spec in task.scorers:
            try:
                get_scorer(spec.name)
            except KeyError as e:
                i = task.scorers.index(spec)
                raise TaskConfigError(f"{task.path}: field 'scorers[{i}].name': {e.args[0]}") from None
        if task.kind != "lm_eval" and not online_only(task, opts):
            preflight_scorers(task, opts)  # e.g. no judge named: said before any data is downloaded
    for task in tasks:
        if task.kind != "lm_eval" and not online_only(task, opts):
            docs[task.name] = load_docs(task, online=opts.online)
    check_writable(opts.output_dir / safe_name(opts.model_label))
    return Plan(opts, tasks, docs, model_cls, index, named)


def preflight_scorers(task: TaskConfig, opts: RunOptions) -> None:
    """Scorers that need something from the user (an LLM judge) say so before the run."""
    for i, spec in enumerate(task.scorers):
        check = getattr(get_scorer(spec.name), "preflight", None)
        if check is not None:
            try:
                check(spec.args, opts.judge)
            except UsageError as e:
                raise UsageError(f"{task.path}: task {task.name!r}, scorer {spec.name} (scorers[{i}]): {e}") from None
