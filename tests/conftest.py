"""Shared test set-up: offline hub access, the scripted test adapter and test tasks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Nothing may reach a hub from the tests: transformers / datasets fail fast instead.
for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
SCRIPTED = f"{TESTS / 'scripted_adapter.py'}:ScriptedModel"
TEST_TASKS = TESTS / "data" / "tasks"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's real-model tests: on a busy 2-core machine a
    second thread spin-waits and makes SmolLM2 forwards ~5x slower (0.3 s vs 1.4 s measured);
    restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def scripted() -> str:
    """--model-path value of the scripted test adapter."""
    return SCRIPTED


@pytest.fixture
def test_tasks() -> Path:
    return TEST_TASKS


@pytest.fixture
def cli(capsys):
    """Run `deeptalk-eval ARGS` in this process; returns (exit code, stdout, stderr)."""
    from deeptalk_eval.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_subprocess(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """`python -m deeptalk_eval ARGS` in a fresh interpreter (for kill / resume tests)."""
    return subprocess.run([sys.executable, "-m", "deeptalk_eval", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, **kw)
