"""`--retention-tasks mmlu,arc_easy`: any lm-eval task by name as a text-retention task.

Each name becomes a `kind: lm_eval` task file (lm-eval's own task config and defaults, no
bundled include_path) in a folder the run scans like --include-path. The files are written
under the run's output folder, so a resumed run finds the same tasks. Most lm-eval tasks
read hub datasets: use them with --online.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

PREFIX = "text_retention_lm_eval_"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def task_name(lm_eval_task: str) -> str:
    return PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", lm_eval_task)


def write_retention_tasks(spec: str, folder: Path) -> list[str]:
    """Write one task file per comma-separated lm-eval task name; returns the harness task names."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError("--retention-tasks: no lm-eval task name given")
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise ValueError(f"--retention-tasks: {bad} are not lm-eval task names (letters, digits, _ . - only)")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{PREFIX}*.yaml"):  # this run's list only, not an earlier run's
        old.unlink()
    out = []
    for n in dict.fromkeys(names):
        task = task_name(n)
        doc = {"task": task, "group": ["text_retention"], "version": 1, "kind": "lm_eval",
               "description": f"lm-eval task {n!r} on the model's text path (from --retention-tasks)",
               "lm_eval": {"tasks": [n]}}
        (folder / f"{task}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        out.append(task)
    return out
