"""Aggregation, the response cache, the registry and the lm-eval bridge, piece by piece."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import SCRIPTED, TEST_TASKS

from deeptalk_eval.aggregate import aggregate_metric, aggregate_task
from deeptalk_eval.api import Audio, GenerationOptions, Request, Response
from deeptalk_eval.cache import ResponseCache, request_key
from deeptalk_eval.model_args import parse_model_args
from deeptalk_eval.registry import TaskIndex, UsageError, model_class
from deeptalk_eval.run.shards import shard_of
from deeptalk_eval.task_config import MetricSpec


def recs(values, errors=()):
    return [{"id": str(i), "metrics": {"m": v}, "error": "boom" if i in errors else None}
            for i, v in enumerate(values)]


def test_mean_stderr_ci_and_on_failure():
    values = [1.0, 0.0, 1.0, 1.0, None, 0.0, 1.0, 1.0]
    zero = aggregate_metric(MetricSpec("m", "mean", "zero"), recs(values))
    assert zero["m"] == pytest.approx(5 / 8)
    assert zero["m_stderr"] == pytest.approx(np.std([1, 0, 1, 1, 0, 0, 1, 1], ddof=1) / math.sqrt(8))
    lo, hi = zero["m_ci"]
    assert 0 <= lo < 5 / 8 < hi <= 1
    assert aggregate_metric(MetricSpec("m", "mean", "zero"), recs(values)) == zero  # fixed bootstrap seed
    assert aggregate_metric(MetricSpec("m", "mean", "one"), recs(values))["m"] == pytest.approx(6 / 8)
    excl = aggregate_metric(MetricSpec("m", "mean", "exclude"), recs(values))
    assert excl["m"] == pytest.approx(5 / 7) and excl["m_n"] == 7


def test_percentiles_sum_and_ratio():
    vals = [float(v) for v in range(1, 101)]
    assert aggregate_metric(MetricSpec("m", "p50", "exclude"), recs(vals))["m"] == pytest.approx(50.5)
    assert aggregate_metric(MetricSpec("m", "p90", "exclude"), recs(vals))["m"] == pytest.approx(np.percentile(vals, 90))
    assert aggregate_metric(MetricSpec("m", "sum", "zero"), recs(vals + [None]))["m"] == pytest.approx(5050)
    # corpus WER: errors / reference words; a failed utterance with on_failure one counts all words wrong
    records = [{"metrics": {"e": 1.0, "w": 4.0}}, {"metrics": {"e": 0.0, "w": 6.0}},
               {"metrics": {"e": None, "w": 10.0}, "error": "x"}]
    spec = MetricSpec("wer", "ratio", "one", numerator="e", denominator="w")
    assert aggregate_metric(spec, records)["wer"] == pytest.approx(11 / 20)
    spec.on_failure = "exclude"
    assert aggregate_metric(spec, records)["wer"] == pytest.approx(1 / 10)
    out = aggregate_task([MetricSpec("m", "mean")], recs([1.0, 0.0, None], errors=(2,)))
    assert (out["samples"], out["failed"], out["failure_rate"]) == (3, 1, pytest.approx(1 / 3))


def test_cache_roundtrip_and_keys(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    req = Request(id="a", text="hi", options=GenerationOptions(max_new_tokens=4))
    key = request_key("fp", "task-sha", req)
    assert key != request_key("fp2", "task-sha", req)
    assert key != request_key("fp", "task-sha2", req)
    assert key != request_key("fp", "task-sha", Request(id="a", text="hi", options=GenerationOptions(max_new_tokens=5)))
    assert cache.get(key) is None
    audio = Audio(np.linspace(-0.5, 0.5, 100), 24000)
    cache.put(key, "t", "a", Response(text="yo", audio=audio, timings={"total": np.float32(0.5)},
                                      tokens={"text": 1}, prompt="P", extra={"k": [1]}), None)
    cache.put("k2", "t", "b", None, "RuntimeError: x")
    cache.close()
    cache = ResponseCache(tmp_path / "c.sqlite")  # persisted
    resp, err = cache.get(key)
    assert err is None and resp.text == "yo" and resp.prompt == "P" and resp.timings == {"total": 0.5}
    np.testing.assert_array_equal(resp.audio.samples, audio.samples)
    assert resp.audio.sample_rate == 24000
    assert cache.get("k2") == (None, "RuntimeError: x")
    assert len(cache) == 2
    # a corrupted audio file is a miss, never wrong audio
    f = next((tmp_path / "c.audio").glob("*.npz"))
    np.savez(f, samples=np.zeros(3, np.float32), sample_rate=24000)
    assert cache.get(key) is None
    assert not GenerationOptions(temperature=0.7).is_deterministic  # such requests are not cached


def test_shard_split_is_a_partition():
    ids = [f"s{i}" for i in range(500)]
    parts = [[s for s in ids if shard_of(s, 4) == i] for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert all(80 < len(p) < 170 for p in parts)


def test_task_index_groups_and_all():
    index = TaskIndex.scan([TEST_TASKS])
    groups = index.all_groups()
    assert set(groups["echo"]) == {"echo_qa", "echo_stream"} and groups["echo_light"] == ["echo_fast"]
    assert set(groups["all"]) >= {"echo_qa", "echo_stream", "echo_fast"}
    assert index.resolve("echo,echo_fast") == ["echo_qa", "echo_stream", "echo_fast"]
    assert index.resolve(str(TEST_TASKS / "echo" / "echo_fast.yaml")) == ["echo_fast"]
    with pytest.raises(UsageError, match="did you mean"):
        index.resolve("ech_qa")


def test_entry_points_register_tasks_and_models(tmp_path, monkeypatch):
    import importlib.metadata as md

    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "t.yaml").write_text((TEST_TASKS / "echo" / "echo_fast.yaml").read_text()
                                              .replace("echo_fast", "plugged_task")
                                              .replace("data/echo.jsonl", str(TEST_TASKS / "echo/data/echo.jsonl")))
    eps = {"deeptalk_eval.tasks": [md.EntryPoint("plug", "os.path:curdir", "deeptalk_eval.tasks")],
           "deeptalk_eval.models": [md.EntryPoint("scripted_ep", "deeptalk_eval.api:SpokenModel",
                                                  "deeptalk_eval.models")]}
    monkeypatch.setattr(md, "entry_points", lambda group: eps.get(group, []))
    monkeypatch.chdir(tmp_path / "plug")  # os.path.curdir == "." -> this folder
    assert "plugged_task" in TaskIndex.scan([]).files
    from deeptalk_eval.api import SpokenModel

    assert model_class("scripted_ep") is SpokenModel


def test_model_path_and_args():
    cls = model_class(None, SCRIPTED)
    assert cls.__name__ == "ScriptedModel"
    # text as given: each value is read later by the type the adapter declares
    assert parse_model_args("a=1,b=0.5,c=true,d=text,e=") == {"a": "1", "b": "0.5", "c": "true", "d": "text", "e": ""}
    with pytest.raises(UsageError, match="not a deeptalk_eval.api.SpokenModel"):
        model_class(None, "json:dumps")


def test_lm_bridge_maps_requests_to_the_adapter():
    from lm_eval.api.instance import Instance

    from deeptalk_eval.lm_bridge import SpokenModelLM

    model = model_class(None, SCRIPTED)()
    lm = SpokenModelLM(model)
    ll = [Instance("loglikelihood", {}, ("Q: 2+2\nA:", " 4"), i) for i in range(3)]
    assert lm.loglikelihood(ll, disable_tqdm=True) == model.loglikelihood([("Q: 2+2\nA:", " 4")] * 3)
    assert lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("abcd",), 0)], True) == [-0.2]
    gen = Instance("generate_until", {}, ("one two\nthree", {"until": ["\n"], "max_gen_toks": 5}), 0)
    # the scripted model echoes its prompt; the bridge cuts at the stop string
    assert lm.generate_until([gen], disable_tqdm=True) == ["one two"]


@pytest.mark.slow
def test_lm_eval_task_runs_through_lm_eval(cli, scripted, tmp_path):
    code, out, err = cli("--model-path", scripted, "--tasks", "text_retention_mmlu_dev", "--limit", "6",
                         "--output-dir", tmp_path, "--no-progress")
    assert code == 0, err
    r = json.loads(sorted(tmp_path.glob("*/*.json"))[-1].read_text())
    m = r["results"]["text_retention_mmlu_dev"]
    assert m["samples"] == 6 and 0 <= m["acc"] <= 1 and m["acc_n"] == 6 and len(m["acc_ci"]) == 2
    assert r["scoring_info"]["text_retention_mmlu_dev"]["lm_eval"]["tasks"] == ["dt_mmlu_dev"]


def test_lm_eval_task_folders_are_not_scanned_as_ours(tmp_path):
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "inner.yaml").write_text("task: inner_lm_task\ndataset_path: json\noutput_type: multiple_choice\n")
    (tmp_path / "outer.yaml").write_text("task: outer\nversion: 1\nkind: lm_eval\nlm_eval: {tasks: [inner_lm_task], include_path: lm}\n")
    index = TaskIndex.scan([tmp_path])
    assert "outer" in index.files and "inner_lm_task" not in index.files
    assert index.load("outer").lm_eval["include_path"] == str(tmp_path / "lm")


def test_overhead_benchmark_runs(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "overhead.json"
    proc = subprocess.run([sys.executable, "benchmarks/harness_overhead.py", "--samples", "50", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["samples"] == 50 and set(report["ms_per_sample"]) == {"cold", "cached", "logged"}
    assert all(v > 0 for v in report["ms_per_sample"].values())
