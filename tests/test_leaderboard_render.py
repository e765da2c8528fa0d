"""Leaderboard: rows from measured runs and reported figures, md / csv / html, and the
HTML page rendered by headless Chromium (table rows and plot images must display)."""
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deeptalk_eval.cli import main as cli_main
from deeptalk_eval.leaderboard import build_table
from deeptalk_eval.leaderboard_rows import LeaderboardError, add_retention, all_rows, collect_rows, flatten_metrics

REPO = Path(__file__).resolve().parent.parent


def write_run(folder: Path, model: str, date: str, s2s: list[float], stage=None, ttfa=0.5, drop=None):
    results = {f"spoken_qa_set{i}": {"s2s_acc": v, "s2s_acc_stderr": 0.01, "s2s_acc_ci": [v - 0.02, v + 0.02],
                                     "s2s_acc_n": 100, "samples": 100, "failed": 0, "failure_rate": 0.0}
               for i, v in enumerate(s2s)}
    results["latency_spoken"] = {"ttfa": ttfa, "p90_ttfa": ttfa * 1.5, "samples": 20, "failed": 0, "failure_rate": 0.0}
    if drop is not None:
        results["text_retention"] = {"drop_rel": drop}
    data = {"results": results,
            "groups": {"spoken_qa": [f"spoken_qa_set{i}" for i in range(len(s2s))], "latency": ["latency_spoken"],
                       "all": list(results)},
            "config": {"model": model, "model_args": {}}, "stage": stage, "date": date}
    path = folder / model / f"{date}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def results_dir(tmp_path):
    root = tmp_path / "results"
    write_run(root, "deeptalk", "2026-01-01T00-00-00", [0.10, 0.20], stage="2.1", ttfa=0.9, drop=0.30)
    write_run(root, "deeptalk", "2026-01-02T00-00-00", [0.30, 0.50], stage="3", ttfa=0.7, drop=0.10)
    write_run(root, "cascade", "2026-01-01T00-00-00", [0.40, 0.40], ttfa=1.8)
    shutil.copytree(REPO / "results" / "reported", root / "reported")
    return root


def test_group_means_and_aliases():
    data = {"results": {"a": {"s2s_acc": 0.2, "s2s_acc_stderr": 0.1, "samples": 1, "failed": 1},
                        "b": {"s2s_acc": 0.4, "samples": 3, "failed": 0},
                        "latency_spoken": {"ttfa": 0.3}},
            "groups": {"qa": ["a", "b"], "latency": ["latency_spoken"], "all": ["a", "b", "latency_spoken"]}}
    flat = flatten_metrics(data)
    assert flat["qa/s2s_acc"] == pytest.approx(0.3)
    assert "a/s2s_acc_stderr" not in flat and "b/samples" not in flat
    assert [k for k in flat if k.startswith("all/")] == ["all/failure_rate"]  # no mean over "all"
    assert flat["all/failure_rate"] == pytest.approx(1 / 4)
    assert flat["latency/ttfa_p50"] == 0.3  # lines up with the reported column
    tts = flatten_metrics({"results": {"tts_repeat": {"speech_wer": 0.2, "text_wer": 0.9}},
                           "groups": {"tts": ["tts_repeat"]}})
    assert tts["tts/wer"] == 0.2  # the spoken channel's WER is what published TTS WERs are


def test_controls_stay_out_of_their_groups_mean():
    data = {"results": {"qa_s2t": {"s2t_acc": 0.5}, "silent": {"s2t_acc": 0.0}, "shuffled": {"s2t_acc": 0.1}},
            "groups": {"qa": ["qa_s2t", "silent", "shuffled"], "qa_controls": ["silent", "shuffled"]}}
    flat = flatten_metrics(data)
    assert flat["qa/s2t_acc"] == 0.5 and flat["qa_controls/s2t_acc"] == pytest.approx(0.05)
    assert flat["silent/s2t_acc"] == 0.0


def test_latest_run_per_model_and_per_stage(results_dir):
    rows = collect_rows(results_dir)
    measured = {r.model: r for r in rows if r.kind == "measured"}
    assert set(measured) == {"deeptalk", "cascade"}
    assert measured["deeptalk"].metrics["spoken_qa/s2s_acc"] == pytest.approx(0.4)  # the newer run
    staged = [r for r in collect_rows(results_dir, per_stage=True) if r.model == "deeptalk"]
    assert sorted(r.stage for r in staged) == ["2.1", "3"]


def test_reported_rows_are_marked_and_kept_apart(results_dir):
    rows = collect_rows(results_dir)
    reported = [r for r in rows if r.kind == "reported"]
    assert len(reported) == len(list((REPO / "results" / "reported").glob("*.json")))
    deepomni = next(r for r in reported if r.model == "DeepOmni")
    # the paper's figures are on its own benchmarks: columns named for them, not ours
    assert deepomni.metrics["reported:llama_q+webq+triviaqa/s2s_acc"] == pytest.approx(0.368)
    assert deepomni.metrics["reported:ceval+cmmlu+mmlu+bbh+more/drop_rel"] == pytest.approx(0.0545)
    assert deepomni.metrics["reported:seed_tts_eval_en/wer"] == pytest.approx(0.0325)
    assert "spoken_qa/s2s_acc" not in deepomni.metrics and "tts/wer" not in deepomni.metrics
    assert "arXiv 2506.21864" in deepomni.source
    for r in reported:
        assert r.source and "not verified" in r.source
    # Measured figures come from measured files only.
    measured = next(r for r in rows if r.model == "deeptalk")
    assert measured.metrics["spoken_qa/s2s_acc"] == pytest.approx(0.4)


def test_every_reported_file_carries_reported_and_source():
    for path in (REPO / "results" / "reported").glob("*.json"):
        data = json.loads(path.read_text())
        assert data["reported"] is True, path
        # where the figure comes from, and that it was read from docs/design.md's list, not the source itself
        assert "docs/design.md \u00a72" in data["source"] and "not verified" in data["source"], path
        for task, metrics in data["results"].items():
            for name, v in metrics.items():
                # fractions (accuracies, WER, drops, seconds under one), or VoiceBench's 1-5 judge scores
                ok = 1 <= v <= 5 if name.endswith("_gpt_score") else 0 < v < 1
                assert isinstance(v, float) and ok, (path, task, name, v)


# Published figures docs/design.md §2 lists, each with the column it must sit in (its own benchmark's).
DESIGN_FIGURES = [
    ("DeepOmni", "reported:ceval+cmmlu+mmlu+bbh+more/drop_rel", 0.0545),
    ("GLM-4-Voice", "reported:ceval+cmmlu+mmlu+bbh+more/drop_rel", 0.4432),
    ("DeepOmni", "reported:llama_q+webq+triviaqa/s2s_acc", 0.368),
    ("Moshi", "reported:llama_q+webq+triviaqa/s2s_acc", 0.125),
    ("DeepOmni", "reported:seed_tts_eval_en/wer", 0.0325),
    ("DeepOmni", "reported:librispeech_test_other/wer", 0.0821),
    ("DeepOmni", "reported:first_audio_claimed/seconds", 0.34),
    ("GLM-4-Voice", "reported:voicebench/alpacaeval_gpt_score", 3.97),
    ("GLM-4-Voice", "reported:voicebench/advbench_refusal_rate", 0.8808),
    ("GLM-4-Voice", "reported:voicebench/overall", 0.5648),
    ("Kimi-Audio", "reported:voicebench/overall", 0.7691),
    ("MiniCPM-o", "reported:voicebench/overall", 0.7123),
    ("Freeze-Omni", "reported:voicebench/overall", 0.5520),
    ("Step-Audio", "reported:voicebench/overall", 0.5084),
    ("LLaMA-Omni", "reported:voicebench/overall", 0.4112),
    ("Mini-Omni", "reported:voicebench/overall", 0.3042),
    ("Moshi", "reported:voicebench/overall", 0.2951),
    ("Kimi-Audio", "reported:openaudiobench/llama_questions_s2t_acc", 0.7933),
    ("Qwen2.5-Omni", "reported:openaudiobench/triviaqa_s2t_acc", 0.5706),
    ("GLM-4-Voice", "reported:openaudiobench/web_questions_s2t_acc", 0.5540),
    ("Qwen2.5-Omni", "reported:ultraeval_audio/web_questions_s2s_acc", 0.3889),
    ("Kimi-Audio", "reported:ultraeval_audio/triviaqa_s2s_acc", 0.3820),
    ("GLM-4-Voice", "reported:ultraeval_audio/triviaqa_s2s_acc", 0.3640),
    ("Moshi", "reported:first_audio_claimed/seconds", 0.2),
    ("Qwen3-Omni", "reported:first_audio_claimed/seconds", 0.234),
    ("LLaMA-Omni", "reported:first_audio_claimed/seconds", 0.226),
    ("VITA-Audio", "reported:first_audio_claimed/seconds", 0.053),
]


@pytest.mark.parametrize("model,column,value", DESIGN_FIGURES)
def test_design_figures_sit_in_their_benchmarks_columns(model, column, value):
    rows = [r for r in collect_rows(REPO / "results") if r.kind == "reported" and r.model == model]
    assert [r.metrics[column] for r in rows if column in r.metrics] == [pytest.approx(value)]


def test_no_reported_figure_in_a_measured_column():
    """The rule: a reported figure shares a column with measured runs only when its file
    declares it the same metric on the same data with the same scoring (none does today)."""
    from deeptalk_eval.leaderboard_rows import REPORTED_PREFIX

    rows = collect_rows(REPO / "results")
    measured = {k for r in rows if r.kind == "measured" for k in r.metrics}
    for r in (r for r in rows if r.kind == "reported"):
        assert not r.same_benchmark, r.path  # if one ever is, this test must name why
        assert all(k.startswith(REPORTED_PREFIX) for k in r.metrics), r.path
        assert not set(r.metrics) & measured, r.path
    # and a measured run never fills a reported:* column (no task or group may take the prefix)
    assert not any(k.startswith(REPORTED_PREFIX) for k in measured)


def test_a_reported_figure_in_a_measured_column_is_refused(tmp_path):
    rep = tmp_path / "results" / "reported"
    rep.mkdir(parents=True)
    row = {"reported": True, "source": "a paper", "config": {"model": "X"},
           "results": {"spoken_qa": {"s2s_acc": 0.5}}}
    (rep / "x.json").write_text(json.dumps(row))
    with pytest.raises(LeaderboardError, match="measured columns.*same_benchmark"):
        collect_rows(tmp_path / "results")
    # declared (with its reason), it may stand in the measured column
    row["same_benchmark"] = {"spoken_qa/s2s_acc": "same questions, same ASR, same match rule"}
    (rep / "x.json").write_text(json.dumps(row))
    write_run(tmp_path / "results", "deeptalk", "2026-01-01T00-00-00", [0.2, 0.4])
    df = build_table(collect_rows(tmp_path / "results"))
    assert set(df.loc[df["kind"] == "reported", "spoken_qa/s2s_acc"]) == {0.5}
    # without the declaration, build_table refuses a row that reaches a measured column anyway
    rows = collect_rows(tmp_path / "results")
    next(r for r in rows if r.kind == "reported").same_benchmark = {}
    with pytest.raises(LeaderboardError, match="without being declared"):
        build_table(rows)


def run_cli(*argv):
    """`deeptalk-eval leaderboard ARGS`: its exit status (2 for unusable input)."""
    return cli_main(["leaderboard", *map(str, argv)])


def test_markdown(results_dir, tmp_path, capsys):
    assert run_cli(results_dir, "--format", "md") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = lines[0]
    assert header.index("text_retention/drop_rel") < header.index("spoken_qa/s2s_acc") < header.index("latency/ttfa_p50")
    row = next(line for line in lines if line.startswith("| deeptalk "))
    assert "measured" in row and " 0.4 " in row and " 0.1 " in row
    assert re.search(r"\| DeepOmni +\| reported .*\| \[\d\]", out)
    assert "Sources of reported rows" in out and "not verified against the PDF" in out
    assert "nan" not in out


def test_csv_and_columns_filter(results_dir, tmp_path):
    out = tmp_path / "lb.csv"
    assert run_cli(results_dir, "--format", "csv", "--columns", "spoken_qa/*", "--out", out) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert set(rows[0]) == {"model", "kind", "date", "spoken_qa/s2s_acc", "source"}
    by_model = {r["model"]: r for r in rows}
    assert float(by_model["cascade"]["spoken_qa/s2s_acc"]) == pytest.approx(0.4)
    assert {r["kind"] for r in rows} == {"measured"}  # published spoken-QA figures are on other questions
    assert run_cli(results_dir, "--format", "csv", "--columns", "reported:llama_q+webq+triviaqa/*", "--out", out) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert set(rows[0]) == {"model", "kind", "date", "reported:llama_q+webq+triviaqa/s2s_acc",
                            "reported:llama_q+webq+triviaqa/s2s_acc_max", "reported:llama_q+webq+triviaqa/s2s_acc_min",
                            "source"}
    by_model = {r["model"]: r for r in rows}
    assert by_model["Moshi"]["kind"] == "reported"
    assert "Mini-Omni" not in by_model  # no spoken-QA figure: not a row of this table
    assert run_cli(results_dir, "--format", "csv", "--no-reported", "--out", out) == 0
    assert {r["kind"] for r in csv.DictReader(io.StringIO(out.read_text()))} == {"measured"}


def test_headline_columns_in_their_order(results_dir, tmp_path):
    from deeptalk_eval.leaderboard import HEADLINE_COLUMNS

    out = tmp_path / "lb.csv"
    assert run_cli(results_dir, "--format", "csv", "--columns", "headline", "--out", out) == 0
    header = next(csv.reader(io.StringIO(out.read_text())))
    metrics = header[3:-1]
    assert metrics and set(metrics) <= set(HEADLINE_COLUMNS)
    assert metrics == [c for c in HEADLINE_COLUMNS if c in metrics]
    assert "spoken_qa/s2s_acc_max" not in header  # everything else stays out


def test_per_stage_table(results_dir, capsys):
    assert run_cli(results_dir, "--per-stage", "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["model"], r["stage"]) for r in rows if r["model"] == "deeptalk"] == [("deeptalk", "2.1"), ("deeptalk", "3")]


def test_bad_inputs(tmp_path, capsys):
    assert run_cli(tmp_path / "nowhere") == 2
    bad = tmp_path / "bad"
    (bad / "m").mkdir(parents=True)
    (bad / "m" / "x.json").write_text("{not json")
    assert run_cli(bad) == 2
    assert "x.json" in capsys.readouterr().err
    rep = tmp_path / "rep" / "reported"
    rep.mkdir(parents=True)
    (rep / "x.json").write_text(json.dumps({"results": {"a": {"b": 0.1}}}))
    with pytest.raises(LeaderboardError, match="reported"):
        collect_rows(tmp_path / "rep")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.json").write_text("{}")
    assert run_cli(other) == 2  # nothing usable
    assert "skipped" in capsys.readouterr().err  # said out loud, not silent


def test_html_is_self_contained(results_dir, tmp_path):
    out = tmp_path / "lb.html"
    assert run_cli(results_dir, "--format", "html", "--out", out) == 0
    page = out.read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert '<tr class="reported">' in page and '<tr class="measured">' in page


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.timeout(120)
def test_html_renders_in_headless_chromium(results_dir, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium here: install it with `apt-get install -y chromium` to run this check")
    out = tmp_path / "lb.html"
    assert run_cli(results_dir, "--format", "html", "--out", out) == 0
    # A copy with a probe script that writes what the browser rendered into the DOM.
    probe = """<script>window.addEventListener('load', () => {
      const imgs = [...document.images];
      const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).map(i => i.id + ':' + i.naturalWidth);
      const rows = document.querySelectorAll('#leaderboard tbody tr').length;
      const p = document.createElement('pre'); p.id = 'probe';
      p.textContent = 'PROBE rows=' + rows + ' imgs=' + imgs.length + ' ok=' + ok.join(',');
      document.body.appendChild(p);
    });</script>"""
    probed = tmp_path / "probed.html"
    probed.write_text(out.read_text().replace("</body>", probe + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True,
                         timeout=90).stdout
    m = re.search(r"PROBE rows=(\d+) imgs=(\d+) ok=([\w:,-]*)", dom)
    assert m, f"probe did not run; chromium printed: {dom[:500]!r}"
    n_rows = len(collect_rows(results_dir))
    assert int(m.group(1)) == n_rows
    assert int(m.group(2)) == 2
    widths = dict(item.split(":") for item in m.group(3).split(",") if item)
    assert set(widths) == {"plot-retention-vs-qa", "plot-latency"}
    assert all(int(w) > 100 for w in widths.values())
    assert "DeepOmni" in dom and "deeptalk" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1400,1600", out.as_uri()],
                   capture_output=True, timeout=90)
    assert shot.is_file() and shot.stat().st_size > 10_000


def write_retention_run(folder: Path, model: str, accs: dict, limit=None, model_args=None, date="2026-01-03"):
    data = {"results": {t: {"acc": a, "acc_stderr": 0.01, "samples": 50, "failed": 0, "failure_rate": 0.0}
                        for t, a in accs.items()},
            "groups": {"text_retention": list(accs), "all": list(accs)},
            "versions": {t: 1 for t in accs},
            "config": {"model": model, "model_args": model_args or {}, "seed": 1234, "limit": limit},
            "date": f"{date}T00:00:00Z"}
    path = folder / model / f"{date}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_measured_retention_drop_against_the_base_llm(tmp_path, capsys):
    root = tmp_path / "results"
    write_retention_run(root, "base_llm", {"tr_a": 0.5, "tr_b": 0.3})
    write_retention_run(root, "deeptalk", {"tr_a": 0.45, "tr_b": 0.25, "tr_c": 0.9})  # tr_c: not in base
    write_retention_run(root, "other", {"tr_a": 0.1}, limit=5)
    rows = {r.model: r for r in collect_rows(root)}
    notes = add_retention(list(rows.values()))
    assert rows["deeptalk"].metrics["text_retention/drop_rel"] == pytest.approx((0.4 - 0.35) / 0.4)
    assert rows["deeptalk"].metrics["text_retention/drop_rel_tasks"] == 2
    assert "text_retention/drop_rel" not in rows["base_llm"].metrics
    assert "text_retention/drop_rel" not in rows["other"].metrics
    assert notes == ["other: no text_retention/drop_rel vs base_llm: limit differ"]
    assert run_cli(root, "--format", "csv", "--columns", "text_retention/drop_rel") == 0
    table = {r["model"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert float(table["deeptalk"]["text_retention/drop_rel"]) == pytest.approx(0.125)


def test_each_row_is_compared_with_the_base_run_of_its_own_limit(tmp_path):
    root = tmp_path / "results"
    write_retention_run(root, "base_llm", {"tr_a": 0.5}, date="2026-01-01")  # full sets
    write_retention_run(root, "base_llm", {"tr_a": 0.8}, limit=30, date="2026-01-02")  # the latest, limit 30
    write_retention_run(root, "full", {"tr_a": 0.4})
    write_retention_run(root, "quick", {"tr_a": 0.6}, limit=30)
    rows = {r.model: r for r in collect_rows(root)}
    assert add_retention(list(rows.values()), baselines=all_rows(root)) == []
    assert rows["full"].metrics["text_retention/drop_rel"] == pytest.approx(0.2)
    assert rows["quick"].metrics["text_retention/drop_rel"] == pytest.approx(0.25)


def test_execution_arguments_stay_out_of_row_labels(tmp_path):
    root = tmp_path / "results"
    write_retention_run(root, "deeptalk", {"tr_a": 0.5}, model_args={"threads": 1, "path": "runs/x"})
    assert [r.model for r in collect_rows(root)] == ["deeptalk (path=runs/x)"]


def test_shards_are_not_rows(tmp_path, capsys):
    root = tmp_path / "results"
    write_retention_run(root, "base_llm", {"tr_a": 0.5})
    shard = json.loads((root / "base_llm" / "2026-01-03.json").read_text())
    shard["config"]["shard"] = [0, 2]
    shard["date"] = "2027-01-01T00:00:00Z"
    (root / "base_llm" / "2027-01-01_shard0of2.json").write_text(json.dumps(shard))
    rows = collect_rows(root)
    assert [r.path.endswith("2026-01-03.json") for r in rows] == [True]
    assert "one shard of a run" in capsys.readouterr().err
