"""End-to-end runs of the real CLI with the scripted adapter: results, logs, cache,
failures, batches, streaming, capabilities, rescore, shard + merge."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deeptalk_eval.results import metrics_identity
from deeptalk_eval.task_config import load_task


def results_of(out_dir: Path) -> dict:
    files = sorted(p for p in out_dir.glob("*/*.json"))
    assert files, f"no results under {out_dir}"
    d = json.loads(files[-1].read_text())
    d["_path"] = files[-1]
    return d


def calls(results: dict) -> dict:
    """The run's model calls and cache hits (its wall times differ run to run)."""
    return {k: results["run"][k] for k in ("model_calls", "cache_hits")}


def base_args(scripted, test_tasks, out, *extra):
    return ["--model-path", scripted, "--include-path", test_tasks, "--output-dir", out, "--no-progress", *extra]


def test_run_writes_results_and_sample_logs(cli, scripted, test_tasks, tmp_path):
    code, out, err = cli(*base_args(scripted, test_tasks, tmp_path, "--tasks", "echo_qa", "--log-samples",
                                    "--stage", "stage2.1", "--seed", "7"))
    assert code == 0, err
    assert "echo_qa" in out and "exact_match" in out  # the summary table
    r = results_of(tmp_path)
    m = r["results"]["echo_qa"]
    # 13 of 20 `say` fields equal the gold answer (tests/data/tasks/echo/data/echo.jsonl)
    assert m["exact_match"] == pytest.approx(13 / 20)
    assert m["samples"] == 20 and m["failed"] == 0 and m["failure_rate"] == 0.0
    assert m["exact_match_stderr"] > 0
    lo, hi = m["exact_match_ci"]
    assert lo < m["exact_match"] < hi
    assert 0 < m["corpus_wer"] < 1
    assert r["stage"] == "stage2.1" and r["seed"] == 7 and r["config"]["seed"] == 7
    assert r["config"]["batch_size"] is None and r["config"]["limit"] is None  # None: the model's greedy batch
    assert set(r["config"]["batch_sizes"].values()) == {1}  # the scripted model batches nothing
    assert r["configs"]["echo_qa"]["config_sha256"] == load_task(test_tasks / "echo" / "echo_qa.yaml").config_sha256
    assert r["versions"]["echo_qa"] == 1
    env = r["environment"]
    for pkg in ("python", "torch", "transformers", "lm-eval", "openai-whisper", "faster-whisper", "jiwer"):
        assert env["versions"][pkg], pkg
    assert env["git"]["commit"] and env["hardware"]["cores"] >= 1
    assert r["model_info"]["scripted"] is True
    # per-sample log: inputs, outputs, audio with sha256, metrics
    records = [json.loads(line) for line in (r["_path"].parent / r["samples_files"]["echo_qa"]).read_text().splitlines()]
    assert [rec["id"] for rec in records] == [f"q{i:02d}" for i in range(1, 21)]
    rec = records[0]
    assert rec["input"]["text"] == "paris" and rec["output"]["text"] == "paris"
    wav = r["_path"].parent / rec["output"]["audio"]["path"]
    assert hashlib.sha256(wav.read_bytes()).hexdigest() == rec["output"]["audio"]["sha256"]
    samples, sr = sf.read(wav)
    assert sr == 16000 and len(samples) == 4000
    assert rec["metrics"]["exact_match"] == 1.0


def test_rerun_hits_cache_and_reproduces_metrics(cli, scripted, test_tasks, tmp_path):
    counter = tmp_path / "calls.txt"
    args = base_args(scripted, test_tasks, tmp_path / "out", "--tasks", "echo_qa,echo_fast",
                     "--model-args", f"counter={counter}")
    assert cli(*args)[0] == 0
    first = results_of(tmp_path / "out")
    assert len(counter.read_text().split()) == 40 and first["run"]["model_calls"] == 40
    assert cli(*args)[0] == 0
    second = results_of(tmp_path / "out")
    assert second["_path"] != first["_path"]
    assert len(counter.read_text().split()) == 40  # nothing sent to the model again
    assert calls(second) == {"model_calls": 0, "cache_hits": 40}
    assert json.dumps(metrics_identity(first)) == json.dumps(metrics_identity(second))


def test_adapter_failure_is_recorded_and_run_goes_on(cli, scripted, test_tasks, tmp_path):
    for bs in ("1", "4"):
        out = tmp_path / f"bs{bs}"
        code, _, err = cli(*base_args(scripted, test_tasks, out, "--tasks", "echo_qa", "--log-samples",
                                      "--batch-size", bs, "--model-args", "fail_ids=q05|q06"))
        assert code == 0
        assert "2/20 samples failed" in err and "scripted failure on q05" in err
        r = results_of(out)
        m = r["results"]["echo_qa"]
        assert m["failed"] == 2 and m["failure_rate"] == pytest.approx(0.1)
        # q05 was right, q06 wrong: on_failure zero -> 12/20; the batch of 4 gives the same figure
        assert m["exact_match"] == pytest.approx(12 / 20)
        # on_failure "one" for WER: both failed samples count as every word wrong
        recs = {json.loads(x)["id"]: json.loads(x) for x in
                (r["_path"].parent / r["samples_files"]["echo_qa"]).read_text().splitlines()}
        assert recs["q05"]["error"] == "RuntimeError: scripted failure on q05"
        assert recs["q05"]["error_stage"] == "model" and recs["q05"]["output"] is None
        assert recs["q04"]["error"] is None and recs["q04"]["output"]["text"] == "four"
    a, b = results_of(tmp_path / "bs1"), results_of(tmp_path / "bs4")
    assert metrics_identity(a) == metrics_identity(b)  # scores do not depend on batch size


def test_every_sample_failing_exits_1(cli, scripted, test_tasks, tmp_path):
    ids = "|".join(f"q{i:02d}" for i in range(1, 21))
    code, _, err = cli(*base_args(scripted, test_tasks, tmp_path, "--tasks", "echo_fast", "--model-args",
                                  f"fail_ids={ids}"))
    assert code == 1
    assert results_of(tmp_path)["results"]["echo_fast"]["failure_rate"] == 1.0


def test_stream_task_is_timed_by_the_harness(cli, scripted, test_tasks, tmp_path):
    code, _, err = cli(*base_args(scripted, test_tasks, tmp_path, "--tasks", "echo_stream", "--log-samples",
                                  "--limit", "5", "--model-args", "delay=0.05"))
    assert code == 0, err
    r = results_of(tmp_path)
    m = r["results"]["echo_stream"]
    assert m["samples"] == 5 and m["exact_match"] == pytest.approx(4 / 5)  # q03 says rome, gold Madrid
    # the scripted model sleeps delay/words before every word: the first text cannot come sooner
    assert m["ttft"] >= 0.04
    recs = [json.loads(x) for x in (r["_path"].parent / r["samples_files"]["echo_stream"]).read_text().splitlines()]
    events = recs[1]["output"]["extra"]["events"]
    assert [e["kind"] for e in events][:3] == ["mark", "text", "audio"]
    assert all(b["t_rel"] >= a["t_rel"] for a, b in zip(events[1:], events[2:]))


def test_a_repeated_command_replays_its_timings_until_machine_code_or_settings_change(cli, scripted, test_tasks,
                                                                                       tmp_path, monkeypatch):
    # Streamed responses carry timings, a measurement of this code on this machine: the same
    # command again replays them (the same figures, no minutes spent timing again) unless asked
    # to measure again, or unless what a timing depends on changed.
    args = base_args(scripted, test_tasks, tmp_path, "--tasks", "echo_stream,echo_fast", "--limit", "3")
    assert cli(*args)[0] == 0
    first = results_of(tmp_path)
    assert first["run"]["model_calls"] == 6 and first["run"]["cache_hits"] == 0
    timing = first["run"]["seconds"]
    assert set(timing) == {"model_load", "echo_stream", "echo_fast", "total"}
    parts = [timing[k] for k in ("model_load", "echo_stream", "echo_fast")]  # disjoint spans inside the total
    assert min(parts) >= 0 and sum(parts) <= timing["total"] + 0.02
    measured = first["config"]["latency_measurement"]
    assert measured["id"].startswith("machine:") and measured["remeasure"] is False
    assert measured["of"]["hardware"]["cores"] and len(measured["of"]["source_sha256"]) == 64

    def latest():
        return json.loads(max(tmp_path.glob("*/*.json"), key=lambda p: p.name).read_text())

    code, out, _ = cli(*args)
    assert code == 0 and calls(latest()) == {"model_calls": 0, "cache_hits": 6}
    assert latest()["results"]["echo_stream"] == first["results"]["echo_stream"]  # the same figures
    assert "echo_stream: 3 of 3 timings are this machine's earlier measurement" in out

    code, out, _ = cli(*args, "--remeasure-latency")  # asked: timed afresh, other answers reused
    assert code == 0 and calls(latest()) == {"model_calls": 3, "cache_hits": 3}
    assert latest()["config"]["latency_measurement"]["remeasure"] is True and "earlier measurement" not in out
    assert not list((tmp_path / ".cache").glob("*.measurement"))  # its id lived until the command completed

    import deeptalk_eval.run.measurement as measurement

    monkeypatch.setattr(measurement, "source_sha256", lambda files: "0" * 64)  # the code changed
    assert cli(*args)[0] == 0 and calls(latest()) == {"model_calls": 3, "cache_hits": 3}
    monkeypatch.undo()
    # a model arg outside the fingerprint (how the model runs: here its delay) is a new measurement too
    assert cli(*args, "--model-args", "delay=0.001")[0] == 0 and calls(latest()) == {"model_calls": 3, "cache_hits": 3}


def test_capability_missing_is_reported_not_silent(cli, test_tasks, tmp_path):
    path = tmp_path / "textonly.py"
    path.write_text(
        "from deeptalk_eval.api import Capabilities, Response, SpokenModel\n"
        "class TextOnly(SpokenModel):\n"
        "    capabilities = Capabilities(text_in=True, text_out=True)\n"
        "    def generate(self, requests):\n"
        "        return [Response(text=r.text) for r in requests]\n")
    code, out, err = cli("--model-path", f"{path}:TextOnly", "--include-path", test_tasks, "--output-dir",
                         tmp_path / "out", "--no-progress", "--tasks", "echo_qa,echo_stream")
    assert code == 0
    r = results_of(tmp_path / "out")
    assert r["status"] == {"echo_qa": "skipped: capability audio_out missing",
                           "echo_stream": "skipped: capability streaming missing"}
    assert "skipped: capability audio_out missing" in out + err


def test_rescore_uses_logs_not_the_model(cli, scripted, test_tasks, tmp_path):
    counter = tmp_path / "calls.txt"
    tasks = tmp_path / "tasks"
    shutil.copytree(test_tasks / "echo", tasks / "echo")
    args = ["--model-path", scripted, "--include-path", tasks, "--output-dir", tmp_path / "out", "--no-progress"]
    assert cli(*args, "--tasks", "echo_qa", "--log-samples", "--model-args", f"counter={counter},fail_ids=q05")[0] == 0
    first = results_of(tmp_path / "out")
    n_calls = len(counter.read_text().split())
    # a new scorer setting: exact_match without normalisation is case-sensitive ("paris" != "Paris")
    yaml_path = tasks / "echo" / "echo_qa.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("args: {answers_field: answers}",
                                                       "args: {answers_field: answers, normaliser: none}"))
    code, out, err = cli(
        "--include-path", tasks, "--output-dir", tmp_path / "out", "--rescore", first["_path"], "--no-progress")
    assert code == 0, err
    second = results_of(tmp_path / "out")
    assert second["rescored_from"] == str(first["_path"])
    assert len(counter.read_text().split()) == n_calls  # the model was not called
    m1, m2 = first["results"]["echo_qa"], second["results"]["echo_qa"]
    assert m1["exact_match"] == pytest.approx(12 / 20)
    # only the all-lower-case golds still match: four, blue whale, seven, eight, piano
    # (the moon too, but q05 failed)
    assert m2["exact_match"] == pytest.approx(5 / 20)
    assert m2["failed"] == 1 and m2["wer"] == m1["wer"]
    # rescoring the unchanged task reproduces the original figures exactly
    yaml_path.write_text((test_tasks / "echo" / "echo_qa.yaml").read_text())
    assert cli("--include-path", tasks, "--output-dir", tmp_path / "out", "--rescore", first["_path"],
               "--no-progress")[0] == 0
    assert metrics_identity(results_of(tmp_path / "out")) == metrics_identity(first)


def test_rescore_without_logs_is_refused(cli, scripted, test_tasks, tmp_path):
    assert cli(*base_args(scripted, test_tasks, tmp_path, "--tasks", "echo_fast"))[0] == 0
    code, _, err = cli("--rescore", results_of(tmp_path)["_path"], "--output-dir", tmp_path)
    assert code == 2 and "--log-samples" in err


def test_shards_merge_to_the_unsharded_figures(cli, scripted, test_tasks, tmp_path):
    common = ["--tasks", "echo_qa,echo_fast", "--limit", "17", "--model-args", "fail_ids=q07"]
    assert cli(*base_args(scripted, test_tasks, tmp_path / "full", *common))[0] == 0
    full = results_of(tmp_path / "full")
    shard_files = []
    ids = set()
    for i in range(3):
        assert cli(*base_args(scripted, test_tasks, tmp_path / "shards", *common, "--shard", f"{i}/3"))[0] == 0
        r = results_of(tmp_path / "shards")
        assert r["config"]["shard"] == [i, 3]
        recs = (r["_path"].parent / r["samples_files"]["echo_qa"]).read_text().splitlines()
        ids |= {json.loads(x)["id"] for x in recs}
        assert 0 < len(recs) < 17
        shard_files.append(r["_path"])
    assert len(ids) == 17
    code, out, err = cli("merge", tmp_path / "merged.json", *shard_files)
    assert code == 0, err
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert json.dumps(metrics_identity(merged)) == json.dumps(metrics_identity(full))
    assert merged["config"]["shard"] is None
    assert calls(merged) == calls(full) and len(merged["run"]["shard_seconds"]) == 3
    # a missing shard, or one given twice, is refused
    assert cli("merge", tmp_path / "m2.json", *shard_files[:2])[0] == 2
    assert cli("merge", tmp_path / "m3.json", shard_files[0], shard_files[0], shard_files[1])[0] == 2


def test_processes_give_the_one_process_figures(cli, scripted, test_tasks, tmp_path):
    """--processes 2: two workers taking the run's parts from a queue and the streaming task
    alone, merged into one results file named like a plain run's, with the plain run's
    figures; the same command again answers from the cache."""
    from deeptalk_eval.run.work_queue import guided_parts

    common = ["--tasks", "echo_qa,echo_fast,echo_stream,text_retention_factoid_mc,text_retention_heldout_text",
              "--limit", "9", "--model-args", "fail_ids=q07", "--log-samples"]
    assert cli(*base_args(scripted, test_tasks, tmp_path / "one", *common))[0] == 0
    one = results_of(tmp_path / "one")
    assert one["results"]["text_retention_factoid_mc"]["acc"] is not None
    code, out, err = cli(*base_args(scripted, test_tasks, tmp_path / "two", *common, "--processes", "2"))
    assert code == 0, err
    (merged,) = [p for p in (tmp_path / "two").glob("*/*.json") if "_" not in p.stem.rpartition(".")[2]]
    two = dict(json.loads(merged.read_text()), _path=merged)  # named like a plain run's results
    assert f"results: {merged}" in out and "echo_qa" in out  # the summary table of the whole
    assert json.dumps(metrics_identity(two)) == json.dumps(metrics_identity(one))
    assert calls(two) == calls(one) and two["config"]["shard"] is None
    for key in ("groups", "versions", "asr"):  # the whole run's, not one child's
        assert two[key] == one[key], key
    assert set(two["status"].values()) == {"ok"}
    # the workers took the queue's parts (slices of the samples, biggest first) as they came free
    parts = two["run"]["parts"]
    assert [tuple(p["shard"]) for p in parts] == [p.shard for p in guided_parts(2, [])]
    assert {p["worker"] for p in parts} <= {0, 1} and len(two["run"]["process_seconds"]) == 3
    assert sorted(t for p in parts for t in p["lm_eval"]) == ["text_retention_factoid_mc",
                                                               "text_retention_heldout_text"]
    assert two["run"]["processes"] == 2 and len(two["run"]["shard_seconds"]) == len(parts) + 1
    assert set(two["run"]["seconds"]) >= {"echo_qa", "echo_fast", "echo_stream", "model_load", "total",
                                          "text_retention_factoid_mc", "text_retention_heldout_text"}
    stamp = two["_path"].stem
    children = sorted(p.name for p in two["_path"].parent.glob(f"{stamp}_*.json"))
    assert children == sorted([f"{stamp}_shard{p['shard'][0]}of{p['shard'][1]}.json" for p in parts]
                              + [f"{stamp}_stream.json"])
    assert len(list(two["_path"].parent.glob(f"{stamp}_worker*.log"))) == 2
    assert not list(two["_path"].parent.glob(f"{stamp}_parts*"))  # the queue is gone once merged
    streamed = json.loads((two["_path"].parent / f"{stamp}_stream.json").read_text())
    assert list(streamed["results"]) == ["echo_stream"] and streamed["config"]["shard"] is None
    for t in ("echo_qa", "echo_stream"):  # the samples in dataset order, in the merged run's folder
        recs = [json.loads(x) for x in (two["_path"].parent / two["samples_files"][t]).read_text().splitlines()]
        assert [r["index"] for r in recs] == list(range(9))
    from deeptalk_eval.results import latest_results

    assert latest_results(merged.parent) == merged  # what regress and the leaderboard take: the whole run
    again = cli(*base_args(scripted, test_tasks, tmp_path / "two", *common, "--processes", "2"))
    assert again[0] == 0
    (latest,) = [p for p in (tmp_path / "two").glob("*/*.json") if p != merged and "_" not in p.stem.rpartition(".")[2]]
    assert json.loads(latest.read_text())["run"]["model_calls"] == 0  # the timings replayed, as every answer
    assert json.loads(latest.read_text())["results"]["text_retention_factoid_mc"] == two["results"][
        "text_retention_factoid_mc"]


def test_lm_eval_tasks_are_dealt_round_the_shards():
    from types import SimpleNamespace

    from deeptalk_eval.run.loop import lm_eval_shard

    tasks = [SimpleNamespace(name=n, kind=k) for n, k in
             (("qa", "generate"), ("mmlu", "lm_eval"), ("bbh", "lm_eval"), ("mc", "lm_eval"), ("tts", "generate"))]
    assert [lm_eval_shard(tasks, t, 2) for t in tasks if t.kind == "lm_eval"] == [0, 1, 0]
    assert {lm_eval_shard(tasks, t, 1) for t in tasks if t.kind == "lm_eval"} == {0}


def test_processes_refuse_a_shard(cli, scripted, test_tasks, tmp_path):
    code, _, err = cli(*base_args(scripted, test_tasks, tmp_path, "--tasks", "echo_fast", "--processes", "2",
                                  "--shard", "0/2"))
    assert code == 2 and "--processes runs the shards itself" in err


def test_accelerate_env_picks_the_shard(cli, scripted, test_tasks, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli(*base_args(scripted, test_tasks, tmp_path, "--tasks", "echo_fast"))[0] == 0
    r = results_of(tmp_path)
    assert r["config"]["shard"] == [1, 2] and 0 < r["results"]["echo_fast"]["samples"] < 20


def test_speech_input_and_bad_audio_are_recorded(cli, scripted, tmp_path):
    task_dir = tmp_path / "tasks"
    (task_dir / "wav").mkdir(parents=True)
    t = np.arange(8000) / 16000
    sf.write(task_dir / "wav" / "ok.wav", 0.2 * np.sin(2 * np.pi * 300 * t), 16000)
    sf.write(task_dir / "wav" / "stereo8k.wav", np.stack([0.1 * np.sin(t), 0.1 * np.cos(t)], 1), 8000)
    sf.write(task_dir / "wav" / "empty.wav", np.zeros(0), 16000)
    nan = 0.1 * np.sin(t)
    nan[100] = np.nan
    sf.write(task_dir / "wav" / "nan.wav", nan, 16000, subtype="FLOAT")
    docs = [{"id": "ok", "wav": "wav/ok.wav", "answers": ["x"]},
            {"id": "rate8k", "wav": "wav/stereo8k.wav", "answers": ["x"]},
            {"id": "empty", "wav": "wav/empty.wav", "answers": ["x"]},
            {"id": "nan", "wav": "wav/nan.wav", "answers": ["x"]},
            {"id": "missing", "wav": "wav/none.wav", "answers": ["x"]}]
    (task_dir / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (task_dir / "speech_in.yaml").write_text(
        "task: speech_in\nversion: 1\ndataset: {path: docs.jsonl, id_field: id}\n"
        "input: {modality: speech, audio_field: wav}\noutput: text\n"
        "scorers: [{name: echo_match}]\nmetrics: [{name: acc}]\n")
    code, out, err = cli("--model-path", scripted, "--include-path", task_dir, "--output-dir", tmp_path / "out",
                         "--tasks", "speech_in", "--log-samples", "--no-progress")
    assert code == 0, err
    r = results_of(tmp_path / "out")
    assert r["results"]["speech_in"]["samples"] == 5 and r["results"]["speech_in"]["failed"] == 3
    recs = {json.loads(x)["id"]: json.loads(x) for x in
            (r["_path"].parent / r["samples_files"]["speech_in"]).read_text().splitlines()}
    assert recs["ok"]["output"]["text"] == "audio of 8000 samples at 16000 Hz"
    # another sample rate is passed on (adapters resample) and recorded; stereo is mixed to mono
    assert recs["rate8k"]["error"] is None and recs["rate8k"]["input"]["audio"]["sample_rate"] == 8000
    assert "audio is empty" in recs["empty"]["error"] and recs["empty"]["error_stage"] == "input"
    assert "NaN" in recs["nan"]["error"]
    assert "cannot read audio" in recs["missing"]["error"]
    wav = r["_path"].parent / recs["ok"]["input"]["audio"]["path"]
    assert hashlib.sha256(wav.read_bytes()).hexdigest() == recs["ok"]["input"]["audio"]["sha256"]


def test_regress_and_leaderboard_through_the_cli(cli, scripted, test_tasks, tmp_path):
    """`deeptalk-eval regress` / `leaderboard` are reached through this CLI (their own modules
    own the logic): identical runs pass, a planted regression breaks the gate."""
    args = base_args(scripted, test_tasks, tmp_path / "out", "--tasks", "echo_fast", "--log-samples")
    assert cli(*args)[0] == 0
    base = results_of(tmp_path / "out")["_path"]
    assert cli(*args)[0] == 0
    same = results_of(tmp_path / "out")["_path"]
    assert cli(*args, "--model-args", "fail_ids=q01|q02|q04")[0] == 0  # three right answers now fail
    worse = results_of(tmp_path / "out")["_path"]
    gates = tmp_path / "gates.yaml"
    gates.write_text("echo_fast/acc: {max_drop: 0.02}\n")
    code, out, _ = cli("regress", "--baseline", base, "--candidate", same, "--gates", gates)
    assert code == 0 and "PASS" in out
    code, out, _ = cli("regress", "--baseline", base, "--candidate", worse, "--gates", gates)
    assert code == 1 and "FAIL" in out
    code, out, _ = cli("leaderboard", tmp_path / "out", "--format", "csv", "--no-reported")
    assert code == 0 and "ScriptedModel" in out


def test_sampled_outputs_are_not_cached_and_failures_can_be_retried(cli, scripted, test_tasks, tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(test_tasks / "echo", tasks / "echo")
    sampled = (tasks / "echo" / "echo_fast.yaml").read_text().replace("task: echo_fast", "task: echo_sampled")
    (tasks / "echo" / "echo_sampled.yaml").write_text(sampled + "generation: {temperature: 0.7}\n")
    counter = tmp_path / "calls.txt"
    args = ["--model-path", scripted, "--include-path", tasks, "--output-dir", tmp_path / "out", "--no-progress",
            "--limit", "4", "--model-args", f"counter={counter},fail_ids=q02"]
    for _ in range(2):
        assert cli(*args, "--tasks", "echo_sampled")[0] == 0
    assert len(counter.read_text().split()) == 2 * 3  # q02 fails, the rest run twice: no cache
    counter.unlink()
    assert cli(*args, "--tasks", "echo_fast")[0] == 0
    assert cli(*args, "--tasks", "echo_fast")[0] == 0
    assert len(counter.read_text().split()) == 3  # greedy: cached, the failure too
    assert calls(results_of(tmp_path / "out")) == {"model_calls": 0, "cache_hits": 4}
    assert cli(*args, "--tasks", "echo_fast", "--retry-failed")[0] == 0
    assert calls(results_of(tmp_path / "out")) == {"model_calls": 1, "cache_hits": 3}


@pytest.mark.slow
def test_real_tts_and_whisper_speech_channel_and_rescore(cli, scripted, tmp_path):
    """The bundled spoken-QA task end to end with the real parts: Piper speaks the
    questions, the scripted model answers with a tone, Whisper tiny.en transcribes it;
    the ASR settings land in the results and rescore reuses the logged audio."""
    out = tmp_path / "out"
    code, _, err = cli("--model-path", scripted, "--tasks", "spoken_qa_factoid_s2s", "--limit", "2",
                       "--output-dir", out, "--log-samples", "--no-progress")
    assert code == 0, err
    r = results_of(out)
    assert r["asr"]["model"] == "tiny.en" and r["asr"]["decoding"]["temperature"] == 0.0
    recs = [json.loads(x) for x in (r["_path"].parent / r["samples_files"]["spoken_qa_factoid_s2s"]).read_text().splitlines()]
    assert all("speech" in rec["transcripts"] for rec in recs)
    assert all(rec["input"]["audio"]["sample_rate"] > 0 and rec["input"]["text"] is None for rec in recs)
    m = r["results"]["spoken_qa_factoid_s2s"]
    assert m["samples"] == 2 and m["s2s_acc"] == 0.0  # a tone answers nothing
    code, _, err = cli("--rescore", r["_path"], "--output-dir", out, "--no-progress")
    assert code == 0, err
    assert metrics_identity(results_of(out)) == metrics_identity(r)
    # results kept without their audio: the logged transcripts score them, with the same ASR only
    for wav in (r["_path"].parent).rglob("*.out.wav"):
        wav.unlink()
    code, _, err = cli("--rescore", r["_path"], "--output-dir", out, "--no-progress")
    assert code == 0, err
    again = results_of(out)

    def without_duration(res):  # the duration needs the samples: unknown without them, not "no audio"
        return {t: {k: v for k, v in m.items() if "duration" not in k} for t, m in metrics_identity(res).items()}

    assert without_duration(again) == without_duration(r)
    m_again = again["results"]["spoken_qa_factoid_s2s"]
    assert m["s2s_duration_within_30_n"] == 2 and m_again["s2s_duration_within_30_n"] == 0
    assert again["scoring_info"]["spoken_qa_factoid_s2s"]["transcripts_from_log"]["samples"] == 2
    code, _, err = cli("--rescore", r["_path"], "--output-dir", out, "--no-progress", "--asr", "faster-whisper:tiny.en")
    assert code == 2 and ".out.wav" in err and "Traceback" not in err


def test_greedy_requests_go_in_the_models_own_batch(cli, test_tasks, tmp_path):
    """Without --batch-size the runner hands greedy requests over in the model's
    `greedy_batch_size`; --batch-size overrides it; the batch used is recorded per task."""
    adapter = tmp_path / "batching.py"
    log = tmp_path / "batches.txt"
    adapter.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from scripted_adapter import ScriptedModel\n"
        "class Batching(ScriptedModel):\n"
        "    greedy_batch_size = 4\n"
        "    def generate(self, requests):\n"
        f"        open({str(log)!r}, 'a').write(f'{{len(requests)}}\\n')\n"
        "        return super().generate(requests)\n")

    def run(out, *extra):
        code, _, err = cli("--model-path", f"{adapter}:Batching", "--include-path", test_tasks, "--output-dir",
                           str(out), "--no-progress", "--tasks", "echo_qa", "--limit", "10", *extra)
        assert code == 0, err
        sizes = [int(x) for x in log.read_text().split()]
        log.unlink()
        return sizes, results_of(out)

    sizes, r = run(tmp_path / "auto")
    assert sizes == [4, 4, 2] and r["config"]["batch_sizes"] == {"echo_qa": 4} and r["config"]["batch_size"] is None
    sizes, r = run(tmp_path / "one", "--batch-size", "1")
    assert sizes == [1] * 10 and r["config"]["batch_sizes"] == {"echo_qa": 1}
