"""The end of a run tells the user what they got: after the summary table, the run's
headline figures beside the latest base_llm run and the published (reported) rows found in
the output folder that share a figure with it — the leaderboard's own figures — and the
`regress` command that gates the next training stage against this run, which then works as
printed. Published rows on other benchmarks (reported:* columns) are pointed to, not lined up."""
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import REPO

from deeptalk_eval.leaderboard import HEADLINE_COLUMNS

# A spoken-QA stand-in the scripted model answers: its accuracy is the group figure
# spoken_qa/s2s_acc, a headline column the reported rows share.
QA_TASK = """task: qa_echo
group: [spoken_qa]
version: 1
dataset: {path: docs.jsonl, id_field: id}
input: {modality: text, text_field: q}
scorers:
  - {name: echo_match, prefix: s2s_}
metrics:
  - {name: s2s_acc, aggregation: mean}
"""
# A published figure on the very questions of qa_echo, declared so: it may stand beside the run.
SAME_SET_ROW = {"reported": True, "source": "a paper that ran qa_echo", "config": {"model": "SameSetSystem"},
                "results": {"spoken_qa": {"s2s_acc": 0.5}},
                "same_benchmark": {"spoken_qa/s2s_acc": "the same four questions, answer rule and scoring"}}
# the scripted model says `q`: right for 3 of 4
DOCS = [{"id": "a", "q": "paris", "answers": ["paris"]}, {"id": "b", "q": "rome", "answers": ["rome"]},
        {"id": "c", "q": "oslo", "answers": ["oslo"]}, {"id": "d", "q": "lima", "answers": ["quito"]}]


@pytest.fixture
def results_dir(tmp_path) -> Path:
    """An output folder holding the repository's reported rows, one published row declared to
    be on the same benchmark as the stand-in task, a base_llm run and a cascade run."""
    out = tmp_path / "results"
    shutil.copytree(REPO / "results" / "reported", out / "reported")
    (out / "reported" / "same_set.json").write_text(json.dumps(SAME_SET_ROW))
    for model in ("base_llm", "cascade"):
        latest = sorted((REPO / "results" / model).glob("*.json"))[-1]
        (out / model).mkdir(parents=True)
        shutil.copy2(latest, out / model / latest.name)
    return out


@pytest.fixture
def qa_tasks(tmp_path) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "qa_echo.yaml").write_text(QA_TASK)
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return folder


def report_of(stdout: str) -> tuple[list[str], str]:
    """(the headline table's lines, the regress command) from the CLI's output."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Headline figures"))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    command = next(line.strip() for line in lines[end:] if line.strip().startswith("deeptalk-eval regress"))
    return lines[start + 1:end], command


def test_run_ends_with_headline_figures_and_the_gate_command(cli, scripted, qa_tasks, results_dir, monkeypatch):
    monkeypatch.chdir(results_dir.parent)  # paths are printed relative to where the user is
    args = ["--model-path", scripted, "--include-path", qa_tasks, "--tasks", "qa_echo", "--log-samples",
            "--output-dir", "results", "--no-progress"]
    code, out, err = cli(*args)
    assert code == 0, err
    assert out.index("results: ") < out.index("Headline figures")  # after the summary table
    table, command = report_of(out)

    header = " ".join(table[:5])  # column titles are wrapped over a few lines
    assert "ScriptedModel" in header and "(this run)" in header
    assert "base_llm" in header and "SameSetSystem" in header and "(reported)" in header
    assert "cascade" not in header  # another model's run is not this run's comparison
    # DeepOmni's spoken-QA figure is over other questions (reported:* column): not beside this run
    assert "DeepOmni" not in header
    assert "other systems are on other benchmarks" in out and "--columns 'reported:*'" in out
    row = next(line for line in table if line.startswith("spoken_qa/s2s_acc "))
    this_run, *others = row.split()[1:]
    assert float(this_run) == pytest.approx(0.75)
    assert float(others[1]) == pytest.approx(SAME_SET_ROW["results"]["spoken_qa"]["s2s_acc"])  # base_llm has —
    shown = [line.split()[0] for line in table if line.split() and "/" in line.split()[0]]
    assert shown and all(m in HEADLINE_COLUMNS for m in shown)

    (results_file,) = (results_dir / "ScriptedModel").glob("*.json")
    words = shlex.split(command)
    assert words[:2] == ["deeptalk-eval", "regress"]
    flags = dict(zip(words[2::2], words[3::2]))
    assert flags == {"--baseline": f"results/ScriptedModel/{results_file.name}",
                     "--candidate": "results/ScriptedModel",
                     "--gates": str((REPO / "results" / "gates" / "default.yaml").resolve())}

    # The next stage: evaluate again, then the printed command gates it against this run.
    assert cli(*args)[0] == 0
    code, out, err = cli(*words[1:])
    assert code == 0, err
    assert f"baseline results/ScriptedModel/{results_file.name}" in out and "PASS" in out
    assert "spoken_qa/s2s_acc" in out  # a gate of the default file, held


def test_a_broken_file_beside_the_run_costs_only_the_table(cli, scripted, qa_tasks, tmp_path):
    """The run itself went well: a broken results file of another model in the same folder
    is named, and the run keeps its exit status and its gate command."""
    out_dir = tmp_path / "out"
    (out_dir / "other").mkdir(parents=True)
    (out_dir / "other" / "broken.json").write_text("{not json")
    code, out, err = cli("--model-path", scripted, "--include-path", qa_tasks, "--tasks", "qa_echo",
                         "--output-dir", out_dir, "--no-progress")
    assert code == 0, err
    assert f"Headline figures: not shown: {out_dir / 'other' / 'broken.json'}: not readable JSON" in out
    assert f"--candidate {out_dir / 'ScriptedModel'}" in out
