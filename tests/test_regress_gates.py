"""deeptalk-eval regress: exit 0 on identical runs, 1 on a planted regression, 2 on garbage."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from deeptalk_eval.cli import main as cli_main
from deeptalk_eval.regress import RegressError, read_gates

REPO = Path(__file__).resolve().parent.parent
ASR = {"backend": "openai-whisper", "model": "tiny.en", "weights": {"sha256": "abc"},
       "decoding": {"temperature": 0.0}, "normaliser": "none (raw transcript)"}


def make_run(folder: Path, name: str, acc: np.ndarray, ttfa: np.ndarray, asr=ASR, log_samples=True,
             normaliser="answer_match_v1"):
    """A results file with a spoken-QA task and a latency task, plus per-sample logs."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"q{i:03d}" for i in range(len(acc))]
    results = {
        "spoken_qa_factoid_s2s": {"s2s_acc": float(acc.mean()), "s2s_no_answer": 0.0,
                                  "samples": len(acc), "failed": 0, "failure_rate": 0.0},
        "latency_spoken": {"ttfa": float(np.percentile(ttfa, 50)), "samples": len(ttfa), "failed": 0,
                           "failure_rate": 0.0},
    }
    data = {"results": results, "groups": {"spoken_qa": ["spoken_qa_factoid_s2s"], "latency": ["latency_spoken"]},
            "config": {"model": name}, "asr": asr,
            "scoring_info": {"spoken_qa_factoid_s2s": {"normalisers": {"qa_match_acc": normaliser}}},
            "date": "2026-01-01"}
    if log_samples:
        sdir = folder / name
        sdir.mkdir(exist_ok=True)
        (sdir / "samples_qa.jsonl").write_text("".join(
            json.dumps({"id": i, "metrics": {"s2s_acc": float(a), "s2s_no_answer": 0.0}}) + "\n"
            for i, a in zip(ids, acc)))
        (sdir / "samples_lat.jsonl").write_text("".join(
            json.dumps({"id": f"l{j}", "metrics": {"ttfa": float(t)}}) + "\n" for j, t in enumerate(ttfa)))
        data["samples_files"] = {"spoken_qa_factoid_s2s": f"{name}/samples_qa.jsonl",
                                 "latency_spoken": f"{name}/samples_lat.jsonl"}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    acc = (rng.random(300) < 0.6).astype(float)
    ttfa = rng.uniform(0.3, 0.5, 20)
    worse = acc.copy()
    worse[np.flatnonzero(acc == 1)[:30]] = 0.0  # planted: 10 points lost on the same questions
    return {
        "base": make_run(tmp_path, "base", acc, ttfa),
        "same": make_run(tmp_path, "same", acc, ttfa),
        "worse": make_run(tmp_path, "worse", worse, ttfa),
        "slower": make_run(tmp_path, "slower", acc, ttfa * 1.5),
        "dir": tmp_path,
    }


def gates_file(tmp_path, gates, name="gates.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(gates))
    return p


GATES = {"spoken_qa_factoid_s2s.s2s_acc": {"max_drop": 0.02, "significant": True},
         "spoken_qa/s2s_acc": {"max_rel_drop": 0.05},
         "latency_spoken/ttfa": {"max_rel_increase": 0.10}}


def run_cli(*argv):
    """`deeptalk-eval regress ARGS`: its exit status (2 for input it cannot compare)."""
    return cli_main(["regress", *map(str, argv)])


def test_identical_runs_pass(runs, capsys):
    g = gates_file(runs["dir"], GATES)
    assert run_cli("--baseline", runs["base"], "--candidate", runs["same"], "--gates", g) == 0
    out = capsys.readouterr().out
    assert "PASS: 3 gates hold" in out


def test_a_model_folder_means_its_latest_run(runs, tmp_path):
    folder = tmp_path / "results" / "deeptalk"
    folder.mkdir(parents=True)
    for stamp, src in (("2026-01-01T00-00-00", runs["worse"]), ("2026-01-02T00-00-00", runs["same"])):
        data = json.loads(src.read_text())
        data["samples_files"] = {t: str(src.parent / p) for t, p in data["samples_files"].items()}
        (folder / f"{stamp}.json").write_text(json.dumps(data))
    g = gates_file(runs["dir"], GATES)
    assert run_cli("--baseline", runs["base"], "--candidate", folder, "--gates", g) == 0  # the newer run
    assert run_cli("--baseline", runs["base"], "--candidate", tmp_path / "results" / "nobody", "--gates", g) == 2


def test_planted_accuracy_regression_fails(runs, capsys):
    g = gates_file(runs["dir"], GATES)
    report = runs["dir"] / "report.json"
    assert run_cli("--baseline", runs["base"], "--candidate", runs["worse"], "--gates", g, "--json", report) == 1
    out = capsys.readouterr().out
    assert "FAIL: 2 of 3 gates broken" in out
    rows = {c["metric"]: c for c in json.loads(report.read_text())["comparisons"]}
    qa = rows["spoken_qa_factoid_s2s/s2s_acc"]
    assert qa["status"] == "BROKEN" and qa["test"] == "mcnemar_exact" and qa["n_paired"] == 300
    assert qa["delta"] == pytest.approx(-0.1) and qa["p_value"] < 1e-6
    assert qa["diff_ci"][1] < 0
    assert qa["rel_delta_ci"][0] < qa["rel_delta"] < qa["rel_delta_ci"][1] < 0
    assert rows["spoken_qa/s2s_acc"]["status"] == "BROKEN"  # group mean, relative drop
    assert rows["latency_spoken/ttfa"]["status"] == "ok"


def test_planted_latency_regression_fails(runs, capsys):
    g = gates_file(runs["dir"], GATES)
    assert run_cli("--baseline", runs["base"], "--candidate", runs["slower"], "--gates", g) == 1
    out = capsys.readouterr().out
    assert "latency_spoken/ttfa" in out and "relative increase 50.00% > 10.00%" in out


def test_significance_flag_spares_noise(runs, tmp_path):
    # A 1-question difference exceeds max_drop 0 but is not significant: the gate holds.
    rng = np.random.default_rng(0)
    acc = (rng.random(300) < 0.6).astype(float)
    one_less = acc.copy()
    one_less[np.flatnonzero(acc == 1)[0]] = 0.0
    b = make_run(tmp_path / "n", "b", acc, np.full(5, 0.4))
    c = make_run(tmp_path / "n", "c", one_less, np.full(5, 0.4))
    strict = gates_file(tmp_path, {"spoken_qa_factoid_s2s/s2s_acc": {"max_drop": 0.0}}, "strict.yaml")
    lenient = gates_file(tmp_path, {"spoken_qa_factoid_s2s/s2s_acc": {"max_drop": 0.0, "significant": True}},
                         "lenient.yaml")
    assert run_cli("--baseline", b, "--candidate", c, "--gates", strict) == 1
    assert run_cli("--baseline", b, "--candidate", c, "--gates", lenient) == 0


def test_without_sample_logs_the_comparison_is_untested(tmp_path, capsys):
    acc = np.array([1.0, 0.0, 1.0, 1.0])
    b = make_run(tmp_path, "b", acc, np.full(3, 0.4), log_samples=False)
    c = make_run(tmp_path, "c", acc, np.full(3, 0.4), log_samples=False)
    assert run_cli("--baseline", b, "--candidate", c, "--gates", "none") == 0
    assert "no per-sample log in both runs" in capsys.readouterr().out
    # significant: true cannot be tested here, so a drop past the limit still breaks the gate.
    worse = make_run(tmp_path, "w", np.array([1.0, 0.0, 0.0, 1.0]), np.full(3, 0.4), log_samples=False)
    g = gates_file(tmp_path, {"spoken_qa_factoid_s2s/s2s_acc": {"max_drop": 0.1, "significant": True}})
    assert run_cli("--baseline", b, "--candidate", worse, "--gates", g) == 1
    assert "significance untestable" in capsys.readouterr().out


def test_garbage_and_missing_inputs_exit_2(runs, tmp_path, capsys):
    g = gates_file(tmp_path, GATES)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{this is not json")
    assert run_cli("--baseline", runs["base"], "--candidate", garbage, "--gates", g) == 2
    assert "garbage.json" in capsys.readouterr().err
    assert run_cli("--baseline", runs["base"], "--candidate", tmp_path / "nope.json", "--gates", g) == 2
    no_results = tmp_path / "noresults.json"
    no_results.write_text("{}")
    assert run_cli("--baseline", no_results, "--candidate", runs["base"], "--gates", g) == 2
    missing_metric = gates_file(tmp_path, {"text_retention/drop_rel": {"max_increase": 0.02}}, "m.yaml")
    assert run_cli("--baseline", runs["base"], "--candidate", runs["same"], "--gates", missing_metric) == 2
    assert "text_retention/drop_rel" in capsys.readouterr().err
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("a: [unclosed")
    assert run_cli("--baseline", runs["base"], "--candidate", runs["same"], "--gates", bad_yaml) == 2
    reported = REPO / "results" / "reported" / "deepomni.json"
    assert run_cli("--baseline", reported, "--candidate", runs["same"], "--gates", "none") == 2


def test_optional_gate_skips_only_when_neither_run_has_it(runs, tmp_path, capsys):
    g = gates_file(tmp_path, {"text_retention/drop_rel": {"max_increase": 0.02, "optional": True}})
    assert run_cli("--baseline", runs["base"], "--candidate", runs["same"], "--gates", g) == 0
    assert "skipped" in capsys.readouterr().out


def test_asr_mismatch_is_refused_unless_allowed(runs, tmp_path, capsys):
    rng = np.random.default_rng(0)
    acc = (rng.random(300) < 0.6).astype(float)
    other = make_run(tmp_path / "o", "other_asr", acc, rng.uniform(0.3, 0.5, 20), asr={**ASR, "model": "base.en"})
    g = gates_file(tmp_path, GATES)
    assert run_cli("--baseline", runs["base"], "--candidate", other, "--gates", g) == 2
    assert "asr.model" in capsys.readouterr().err
    assert run_cli("--baseline", runs["base"], "--candidate", other, "--gates", g, "--allow-asr-mismatch") == 0
    renorm = make_run(tmp_path / "r", "renorm", acc, rng.uniform(0.3, 0.5, 20), normaliser="answer_match_v2")
    assert run_cli("--baseline", runs["base"], "--candidate", renorm, "--gates", g) == 2
    assert "normaliser spoken_qa_factoid_s2s/qa_match_acc" in capsys.readouterr().err
    text_only = make_run(tmp_path / "t", "text_only", acc, rng.uniform(0.3, 0.5, 20), asr=None)
    assert run_cli("--baseline", runs["base"], "--candidate", text_only, "--gates", g) == 0  # nothing to clash


def test_gate_file_validation(tmp_path):
    with pytest.raises(RegressError, match="unknown key"):
        read_gates(gates_file(tmp_path, {"a/b": {"max_dorp": 0.1}}))
    with pytest.raises(RegressError, match="names no limit"):
        read_gates(gates_file(tmp_path, {"a/b": {"optional": True}}))
    with pytest.raises(RegressError, match="must be a number"):
        read_gates(gates_file(tmp_path, {"a/b": {"max_drop": "much"}}))
    with pytest.raises(RegressError, match="task/metric"):
        read_gates(gates_file(tmp_path, {"nodots": {"max_drop": 0.1}}))
    gates = read_gates(gates_file(tmp_path, {"latency.ttfa_p50": {"max_increase": 0.1}}))
    assert gates[0].metric == "latency/ttfa_p50" and gates[0].limits == {"max_increase": 0.1}


def test_shipped_default_gates_parse_and_apply(runs, capsys):
    gates = read_gates(REPO / "results" / "gates" / "default.yaml")
    assert gates and all(g.limits for g in gates)
    # The default file is used when --gates is not given.
    assert run_cli("--baseline", runs["base"], "--candidate", runs["same"]) == 0
    assert run_cli("--baseline", runs["base"], "--candidate", runs["worse"]) == 1
    assert "spoken_qa_factoid_s2s/s2s_acc" in capsys.readouterr().out


def with_judge(path: Path, **judge) -> Path:
    """The run at `path` with an LLM judge recorded for its spoken-QA task (as scoring.judge records it)."""
    data = json.loads(path.read_text())
    ident = {"spec": "openai:gpt-4o-mini", "backend": "openai-chat", "model": "gpt-4o-mini",
             "prompt_template": "open_1to5_v1", "prompt_sha256": "a" * 64, "prompt_text": "...",
             "version": "deeptalk_judge_v1", "decoding": {"temperature": 0.0}, **judge}
    data["scoring_info"]["spoken_qa_factoid_s2s"]["judge"] = ident
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change", [{"model": "gpt-4o"}, {"prompt_sha256": "b" * 64}, {"version": "deeptalk_judge_v2"}])
def test_runs_judged_by_different_judges_are_refused(runs, tmp_path, capsys, change):
    g = gates_file(tmp_path, GATES)
    base = with_judge(runs["base"])
    assert run_cli("--baseline", base, "--candidate", with_judge(runs["same"]), "--gates", g) == 0
    capsys.readouterr()
    other = with_judge(runs["same"], **change)
    for extra in ([], ["--allow-asr-mismatch"]):  # no flag compares two judges' figures
        assert run_cli("--baseline", base, "--candidate", other, "--gates", g, *extra) == 2
        err = capsys.readouterr().err
        key = next(iter(change))
        assert "different LLM judges" in err and f"spoken_qa_factoid_s2s: judge {key}" in err
    # the same judge under another spec string (or other decoding) is the same identity
    assert run_cli("--baseline", base, "--candidate", with_judge(runs["same"], spec="openai:gpt-4o-mini@local"),
                   "--gates", g) == 0


def test_a_task_judged_in_one_run_only_is_refused(runs, tmp_path, capsys):
    g = gates_file(tmp_path, GATES)
    assert run_cli("--baseline", with_judge(runs["base"]), "--candidate", runs["same"], "--gates", g) == 2
    assert "spoken_qa_factoid_s2s: judged in the baseline only" in capsys.readouterr().err
