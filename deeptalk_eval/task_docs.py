"""A task's docs (its samples): a local data file, a hub dataset or the task's example doc,
through the task's `process_docs` hook, each with a unique id.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from deeptalk_eval.task_config import TaskConfig
from deeptalk_eval.task_yaml import TaskConfigError, read_user_text

# The field a multi-split hub load adds to every doc: the split it came from.
HUB_SPLIT_FIELD = "hub_split"


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
