"""The text-mode bridge to lm-evaluation-harness.

`SpokenModelLM` wraps any `SpokenModel` that can score text (capabilities.loglikelihood)
as an lm-eval `LM`, so retention tasks (`kind: lm_eval`) run through lm-eval itself with
its own prompts, few-shot sampling and metrics. The harness hands lm-eval a built
instance, so the bridge needs no place in lm-eval's model registry.

`run_lm_eval` runs one of our `kind: lm_eval` tasks and converts lm-eval's results and
per-item samples into ours (metric names without lm-eval's ",none" filter suffix).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from lm_eval.api.model import LM
from tqdm import tqdm

from deeptalk_eval.api import GenerationOptions, Request, SpokenModel
from deeptalk_eval.stop_strings import first_stop

CHUNK = 32  # requests per adapter call; each chunk is committed to lm-eval's cache


class SpokenModelLM(LM):
    def __init__(self, model: SpokenModel, chunk_size: int = CHUNK):
        super().__init__()
        if not model.capabilities.loglikelihood:
            raise ValueError(f"{type(model).__name__} cannot score text (capabilities.loglikelihood is False)")
        self.model = model
        self.chunk_size = chunk_size

    def _chunks(self, requests: list, desc: str, disable: bool):
        for b in tqdm(range(0, len(requests), self.chunk_size), desc=desc, disable=disable):
            yield requests[b:b + self.chunk_size]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = []
        for chunk in self._chunks(requests, "loglikelihood", disable_tqdm):
            pairs = [tuple(r.args[:2]) for r in chunk]
            scores = self.model.loglikelihood(pairs)
            if len(scores) != len(pairs):
                raise ValueError(f"{type(self.model).__name__}.loglikelihood returned {len(scores)} "
                                 f"scores for {len(pairs)} pairs")
            for r, (ll, greedy) in zip(chunk, scores):
                res = (float(ll), bool(greedy))
                self.cache_hook.add_partial("loglikelihood", r.args, res)
                out.append(res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out: list[float] = []
        for chunk in self._chunks(requests, "loglikelihood_rolling", disable_tqdm):
            scores = self.model.loglikelihood_rolling([r.args[0] for r in chunk])
            for r, ll in zip(chunk, scores, strict=True):
                self.cache_hook.add_partial("loglikelihood_rolling", r.args, float(ll))
                out.append(float(ll))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str] = []
        for chunk in self._chunks(requests, "generate_until", disable_tqdm):
            reqs = []
            for i, r in enumerate(chunk):
                context, kwargs = r.args[0], dict(r.args[1] or {})
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                opts = GenerationOptions(
                    max_new_tokens=int(kwargs.get("max_gen_toks", 256)),
                    temperature=float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0,
                    stop=tuple(until))
                reqs.append(Request(id=f"lm_eval-{len(out) + i}", text=context, output_modality="text",
                                    options=opts, raw_prompt=True))
            responses = self.model.generate(reqs)
            for r, req, resp in zip(chunk, reqs, responses, strict=True):
                text = resp.text or ""
                cut = first_stop(text, req.options.stop)  # the adapter may not honour stop strings
                if cut >= 0:
                    text = text[:cut]
                self.cache_hook.add_partial("generate_until", r.args, text)
                out.append(text)
        return out


def _metric_name(key: str, prefix: str) -> str:
    metric, _, filt = key.partition(",")
    return prefix + (metric if filt in ("", "none") else f"{metric}_{filt}")


@functools.cache
def _task_index(include_path: str | None, include_defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def task_manager(include_path: str | None, names: list[str]):
    """lm-eval's task index, each kind built once per process. Indexing lm-eval's own ~230 task
    folders takes seconds per task run (most of a task's time when its answers are cached), so
    when the task's include_path holds every task it names, only that folder is indexed; a task
    named there wins over a built-in of the same name either way, so the task is the same."""
    if include_path:
        own = _task_index(include_path, False)
        if set(names) <= set(own.all_tasks):
            return own
    return _task_index(include_path, True)


def run_lm_eval(task, model: SpokenModel, seed: int, limit: int | None,
                cache_path: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Run a `kind: lm_eval` task; returns (our metrics, per-item records, info for results)."""
    from lm_eval import simple_evaluate

    from deeptalk_eval.aggregate import bootstrap_ci

    block = task.lm_eval
    tm = task_manager(block.get("include_path"), list(block["tasks"]))
    out = simple_evaluate(
        model=SpokenModelLM(model), tasks=list(block["tasks"]), num_fewshot=block.get("num_fewshot"),
        limit=block.get("limit") or limit, task_manager=tm, use_cache=cache_path, log_samples=True,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        bootstrap_iters=0)
    if out is None:
        raise RuntimeError("lm-eval returned no results")
    many = len(out["results"]) > 1
    metrics: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for lm_task, res in out["results"].items():
        prefix = f"{lm_task}/" if many else ""
        samples = out.get("samples", {}).get(lm_task, [])
        names = samples[0].get("metrics", []) if samples else []
        for s in samples:
            values = {m: float(s[m]) for m in names if isinstance(s.get(m), (int, float))}
            records.append({"index": s["doc_id"], "id": f"{lm_task}/{s['doc_id']}", "error": None,
                            "target": str(s.get("target")), "response": str(s.get("filtered_resps"))[:500],
                            "metrics": {prefix + k: v for k, v in values.items()}})
        for key, value in res.items():
            metric = key.partition(",")[0]
            if metric not in names or not isinstance(value, (int, float)):
                continue  # "alias", "sample_len", lm-eval's own stderr entries
            name = _metric_name(key, prefix)
            metrics[name] = float(value)
            vals = np.array([r["metrics"][prefix + metric] for r in records
                             if r["id"].startswith(f"{lm_task}/") and prefix + metric in r["metrics"]])
            # stderr and CI over items, where lm-eval's figure is the mean of the item values
            if vals.size > 1 and math.isclose(vals.mean(), value, rel_tol=1e-9, abs_tol=1e-12):
                metrics[f"{name}_stderr"] = float(vals.std(ddof=1) / math.sqrt(vals.size))
                metrics[f"{name}_ci"] = list(bootstrap_ci(vals))
            metrics[f"{name}_n"] = int(vals.size)
    n = len(records)
    metrics.update({"samples": n, "failed": 0, "failure_rate": 0.0})
    info = {"lm_eval": {"tasks": list(out["results"]), "n-shot": out.get("n-shot"),
                        "versions": out.get("versions"), "higher_is_better": out.get("higher_is_better")}}
    return metrics, records, info
