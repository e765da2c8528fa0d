"""Kill a real run with SIGKILL part-way and start it again with the same command: the
second run finishes with byte-identical metrics, every sample sent to the model exactly
once, nothing finished before the kill computed again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from conftest import REPO, SCRIPTED, TEST_TASKS, run_subprocess

from deeptalk_eval.results import metrics_identity

DELAY = 0.3  # seconds per sample in the scripted model


def _results(folder):
    files = sorted(folder.glob("*/*.json"))
    return json.loads(files[-1].read_text()), files


def test_sigkill_then_resume_is_exactly_once_and_identical(tmp_path):
    counter = tmp_path / "calls.txt"
    out = tmp_path / "out"
    args = ["--model-path", SCRIPTED, "--include-path", TEST_TASKS, "--tasks", "echo_fast", "--limit", "12",
            "--output-dir", out, "--log-samples", "--no-progress",
            "--model-args", f"delay={DELAY},counter={counter},fail_ids=q03"]
    proc = subprocess.Popen([sys.executable, "-m", "deeptalk_eval", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Wait until 5 samples are done, then kill in the middle of the 6th one's delay.
        deadline = time.monotonic() + 60
        while not (counter.exists() and len(counter.read_text().split()) >= 5):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
        time.sleep(DELAY / 2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done_before = counter.read_text().split()
    assert 5 <= len(done_before) < 12
    assert not list(out.glob("*/*.json")), "a killed run must not leave a results file"

    resumed = run_subprocess(*args)
    assert resumed.returncode == 0, resumed.stderr
    calls = counter.read_text().split()
    assert Counter(calls) == Counter(f"q{i:02d}" for i in range(1, 13) if i != 3)  # exactly once each
    assert calls[: len(done_before)] == done_before
    resumed_results, _ = _results(out)
    assert resumed_results["run"]["cache_hits"] >= 5

    # An uninterrupted run of the same command elsewhere gives the same bytes of metrics.
    fresh = run_subprocess(*[str(a).replace(str(out), str(tmp_path / "fresh")).replace(
        str(counter), str(tmp_path / "calls2.txt")) for a in args])
    assert fresh.returncode == 0, fresh.stderr
    fresh_results, _ = _results(tmp_path / "fresh")
    assert json.dumps(metrics_identity(resumed_results)) == json.dumps(metrics_identity(fresh_results))
    m = resumed_results["results"]["echo_fast"]
    assert m["samples"] == 12 and m["failed"] == 1


def test_a_killed_run_keeps_its_finished_tasks_in_progress_json(tmp_path):
    counter = tmp_path / "calls.txt"
    out = tmp_path / "out"
    args = ["--model-path", SCRIPTED, "--include-path", TEST_TASKS, "--tasks", "echo_qa,echo_fast", "--limit", "4",
            "--output-dir", out, "--no-progress", "--model-args", f"delay={DELAY},counter={counter}"]
    proc = subprocess.Popen([sys.executable, "-m", "deeptalk_eval", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (counter.exists() and len(counter.read_text().split()) >= 6):  # inside the second task
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(out.glob("*/*.json"))
    (progress,) = out.glob("*/*/progress.json")
    kept = json.loads(progress.read_text())
    assert kept["run"]["finished"] is False and list(kept["results"]) == ["echo_qa"]
    assert kept["results"]["echo_qa"]["samples"] == 4 and kept["run"]["seconds"]["echo_qa"] > 0

    resumed = run_subprocess(*args)
    assert resumed.returncode == 0, resumed.stderr
    final, files = _results(out)
    assert len(files) == 1 and final["run"]["finished"] is True and set(final["results"]) == {"echo_qa", "echo_fast"}
    assert len(list(out.glob("*/*/progress.json"))) == 1  # the finished run left none, the killed one's stays
