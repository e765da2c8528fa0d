"""The house's rules as the maintained tools check them (docs/design.md §5).

import-linter keeps the arrows (pyproject.toml [tool.importlinter]): the reference model
never imports the harness, the shared floor imports neither, the harness imports nothing
from the trainer, only the reference's adapter imports the reference model, no import
cycles. ruff keeps the code clean (pyproject.toml [tool.ruff]).
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/bootstrap.sh (requirements.txt pins it)")
    return str(path)


def test_import_contracts_are_kept():
    done = subprocess.run([tool("lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_ruff_finds_nothing():
    done = subprocess.run([tool("ruff"), "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
