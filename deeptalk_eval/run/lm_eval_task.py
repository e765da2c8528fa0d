"""One `kind: lm_eval` task, run by lm-eval itself through `deeptalk_eval.lm_bridge`, with
lm-eval's response cache kept per model fingerprint in the output folder."""
from __future__ import annotations

import hashlib

from deeptalk_eval.api import SpokenModel
from deeptalk_eval.errors import UsageError
from deeptalk_eval.run.options import RunOptions
from deeptalk_eval.run.outcome import TaskOutcome, error_text
from deeptalk_eval.task_config import TaskConfig

# lm-eval response caches live per model fingerprint and this version (bump when what an
# adapter answers to an lm-eval request changes)
LM_EVAL_CACHE_VERSION = 2


def run_lm_eval_task(task: TaskConfig, model: SpokenModel, fingerprint: str, opts: RunOptions) -> TaskOutcome:
    from deeptalk_eval.lm_bridge import run_lm_eval

    # v2: adapters feed lm-eval contexts untemplated (raw_prompt); v1 caches hold templated answers
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    # one file per task: `--processes` runs different lm_eval tasks side by side, and lm-eval's
    # SQLite cache is not for concurrent writers
    cache_prefix = opts.output_dir / ".cache" / f"lm_eval_v{LM_EVAL_CACHE_VERSION}_{key}_{task.name}"
    try:
        metrics, records, info = run_lm_eval(task, model, seed=opts.seed, limit=opts.limit,
                                             cache_path=str(cache_prefix))
    except UsageError:
        raise  # the adapter's set-up mistake: the CLI's one line, exit 2
    except Exception as e:
        return TaskOutcome(task.name, f"error: lm-eval: {error_text(e)}")
    return TaskOutcome(task.name, "ok", metrics, records, info)
