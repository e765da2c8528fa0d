"""scripts/run.sh, the main job: each documented default (--model deeptalk --tasks all
--log-samples) stays unless the arguments name that option; subcommands, --rescore, --help
and --version go through untouched. The real script runs under bash with
DEEPTALK_RUN_PRINT=1, which prints the final command instead of setting up .venv and
running it; it runs from a copy beside which checkpoints/reference exists or not, so both
sides of the cascade fallback are seen whatever this checkout holds."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

DEFAULTS = ["--model", "deeptalk", "--tasks", "all", "--log-samples"]


def script_copy(root: Path, with_checkpoint: bool) -> Path:
    """run.sh alone in a fresh tree: no bootstrap.sh, no .venv, so a run that tried to set up fails."""
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "run.sh", root / "scripts" / "run.sh")
    if with_checkpoint:
        (root / "checkpoints" / "reference").mkdir(parents=True)
    return root / "scripts" / "run.sh"


def final_command(script: Path, *args: str, cores: int = 1) -> tuple[list[str], str]:
    """(the arguments run.sh would hand deeptalk-eval, its stderr), as if `cores` cores were
    free (nproc honours OMP_NUM_THREADS)."""
    env = dict(os.environ, DEEPTALK_RUN_PRINT="1", OMP_NUM_THREADS=str(cores))
    proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout)
    assert words[0] == "deeptalk-eval", proc.stdout
    return words[1:], proc.stderr


@pytest.fixture
def run_sh(tmp_path) -> Path:
    return script_copy(tmp_path / "repo", with_checkpoint=True)


@pytest.mark.parametrize("args, expected", [
    ([], DEFAULTS),
    (["--limit", "30"], DEFAULTS + ["--limit", "30"]),
    (["--model", "cascade", "--limit", "5"], ["--tasks", "all", "--log-samples", "--model", "cascade", "--limit", "5"]),
    (["--model=cascade"], ["--tasks", "all", "--log-samples", "--model=cascade"]),
    (["--tasks", "spoken_qa"], ["--model", "deeptalk", "--log-samples", "--tasks", "spoken_qa"]),
    (["--tasks=asr,tts"], ["--model", "deeptalk", "--log-samples", "--tasks=asr,tts"]),
    (["--model-path", "x.py:M"], ["--tasks", "all", "--log-samples", "--model-path", "x.py:M"]),
    (["--log-samples", "--limit", "1"], ["--model", "deeptalk", "--tasks", "all", "--log-samples", "--limit", "1"]),
    (["run", "--limit", "2"], ["run"] + DEFAULTS + ["--limit", "2"]),
])
def test_defaults_stay_unless_named(run_sh, args, expected):
    assert final_command(run_sh, *args)[0] == expected


GB = 1048576  # kB


@pytest.mark.parametrize("cores, mem_gb, args, expected", [
    (2, 24, [], DEFAULTS + ["--processes", "2"]),
    (16, 64, ["--limit", "30"], DEFAULTS + ["--processes", "4", "--limit", "30"]),
    (16, 20, [], DEFAULTS + ["--processes", "3"]),  # one per 6 GB available
    (2, 8, [], DEFAULTS),
    (1, 24, [], DEFAULTS),
    (2, 24, ["--processes", "1"], DEFAULTS + ["--processes", "1"]),
    (2, 24, ["--shard", "0/2"], DEFAULTS + ["--shard", "0/2"]),
    (2, 24, ["--device=cuda"], DEFAULTS + ["--device=cuda"]),
    (2, 24, ["--model-args", "device=cuda,dtype=bfloat16"], DEFAULTS + ["--model-args", "device=cuda,dtype=bfloat16"]),
])
def test_one_process_per_core_unless_named(run_sh, monkeypatch, cores, mem_gb, args, expected):
    monkeypatch.setenv("DEEPTALK_RUN_MEM_KB", str(mem_gb * GB))
    assert final_command(run_sh, *args, cores=cores)[0] == expected


def test_no_processes_under_accelerate(run_sh, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("DEEPTALK_RUN_MEM_KB", str(24 * GB))
    assert final_command(run_sh, cores=2)[0] == DEFAULTS


@pytest.mark.parametrize("args", [
    ["list", "tasks"],
    ["--rescore", "f.json"],
    ["validate", "my_task.yaml"],
    ["leaderboard", "results/", "--columns", "headline"],
    ["regress", "--baseline", "a.json", "--candidate", "b.json"],
    ["merge", "out.json", "s0.json", "s1.json"],
    ["--help"],
    ["-h"],
    ["--version"],
    ["--model", "cascade", "--help"],
])
def test_other_commands_pass_untouched(run_sh, args):
    assert final_command(run_sh, *args)[0] == args


def test_without_the_reference_checkpoint_the_cascade_runs(tmp_path):
    script = script_copy(tmp_path / "repo", with_checkpoint=False)
    args, err = final_command(script, "--limit", "30")
    assert args == ["--model", "cascade", "--tasks", "all", "--log-samples", "--limit", "30"]
    assert "no reference checkpoint" in err
    args, err = final_command(script, "--model", "base_llm")  # a model named: no fallback, no note
    assert args == ["--tasks", "all", "--log-samples", "--model", "base_llm"] and err == ""


def test_the_quick_look_is_a_valid_run(run_sh):
    """What `scripts/run.sh --limit 30` hands over is a complete run for the real CLI parser
    (it used to lack --model and stop with "--model NAME ... is required")."""
    from deeptalk_eval.cli import build_parser

    args, _ = final_command(run_sh, "--limit", "30")
    parsed = build_parser().parse_args(["run", *args])
    assert (parsed.model, parsed.tasks, parsed.log_samples, parsed.limit) == ("deeptalk", "all", True, 30)


def test_version_passes_through_to_a_real_answer(capsys):
    from importlib import metadata

    from deeptalk_eval.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"deeptalk-eval {metadata.version('deeptalk-eval')}"
