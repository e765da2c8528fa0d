"""The shared, model-independent cache (deeptalk_eval.shared_cache): the ASR noise floor
computed in one model's run is reused by the next model's run; its keys follow the ASR
identity; it can be turned off; the results say what came from it. Real Whisper tiny.en
and Piper on 3 items, in a private DEEPTALK_CACHE."""
from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from deeptalk_common.paths import cache_dir
from deeptalk_eval import shared_cache
from deeptalk_eval.scoring import asr
from deeptalk_eval.scoring.asr import TranscriptCache

TASK = "spoken_qa_asr_noise_floor"


@pytest.fixture
def shared(tmp_path, monkeypatch, one_torch_thread) -> Path:
    """An empty shared cache; Whisper's converted weights are linked in (an asset, not what is tested)."""
    folder = tmp_path / "shared"
    folder.mkdir()
    if (cache_dir() / "whisper").is_dir():
        (folder / "whisper").symlink_to(cache_dir() / "whisper")
    monkeypatch.setenv("DEEPTALK_CACHE", str(folder))
    monkeypatch.delenv(shared_cache.ENV_OFF, raising=False)
    return folder


@pytest.fixture
def asr_calls(monkeypatch) -> list[str]:
    """The backend of every clip that really went through Whisper."""
    calls: list[str] = []
    for cls in (asr.OpenAIWhisperTranscriber, asr.FasterWhisperTranscriber):
        def counted(self, x, _run=cls._run):
            calls.append(self.backend)
            return _run(self, x)
        monkeypatch.setattr(cls, "_run", counted)

    def counted_batch(self, xs, _run_batch=asr.OpenAIWhisperTranscriber._run_batch):  # its own batched path
        calls.extend([self.backend] * len(xs))
        return _run_batch(self, xs)
    monkeypatch.setattr(asr.OpenAIWhisperTranscriber, "_run_batch", counted_batch)
    return calls


@pytest.fixture
def noise_floor(cli, scripted, tmp_path):
    """Run the noise floor (3 items) with the scripted model; returns the results."""
    runs = iter(range(100))

    def run(*extra: str) -> dict:
        out = tmp_path / f"out{next(runs)}"  # a fresh output folder: the per-run cache never helps
        code, _, err = cli("--model-path", scripted, "--tasks", TASK, "--limit", "3", "--output-dir", out,
                           "--no-progress", *extra)
        assert code == 0, err
        (path,) = out.glob("*/*.json")
        return json.loads(path.read_text())

    return run


def counts(results: dict) -> dict:
    return results["run"]["shared_cache"]["tasks"][TASK]


def rows(folder: Path) -> int:
    with sqlite3.connect(folder / "asr" / "transcripts.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM transcripts").fetchone()[0]


def test_second_model_reuses_the_noise_floor(shared, asr_calls, noise_floor):
    first = noise_floor("--model-args", "version=1")
    assert asr_calls == ["openai-whisper"] * 3
    assert counts(first) == {"tts_cached": 0, "tts_synthesised": 3, "transcripts_cached": 0,
                             "transcripts_computed": 3}
    second = noise_floor("--model-args", "version=2")  # another model: another fingerprint
    assert second["model_info"]["fingerprint"] != first["model_info"]["fingerprint"]
    assert asr_calls == ["openai-whisper"] * 3  # Whisper did not run again
    assert counts(second) == {"tts_cached": 3, "tts_synthesised": 0, "transcripts_cached": 3,
                              "transcripts_computed": 0}
    assert second["results"][TASK] == first["results"][TASK]
    assert second["run"]["shared_cache"]["dir"] == str(shared) and second["config"]["shared_cache"] is True
    assert second["asr"]["cache"] == str(shared / "asr" / "transcripts.sqlite")
    assert rows(shared) == 3


def test_keys_follow_the_asr_identity(shared, asr_calls, noise_floor, monkeypatch):
    noise_floor()
    assert len(asr_calls) == 3
    other_backend = noise_floor("--asr", "faster-whisper:tiny.en")
    assert asr_calls[3:] == ["faster-whisper"] * 3
    assert counts(other_backend)["transcripts_computed"] == 3
    assert other_backend["asr"]["config_key"] != noise_floor()["asr"]["config_key"]  # and back: cached
    assert len(asr_calls) == 6
    monkeypatch.setitem(asr._DECODING, "no_speech_threshold", 0.5)  # a decoding option changed
    changed = noise_floor()
    assert asr_calls[6:] == ["openai-whisper"] * 3 and counts(changed)["transcripts_computed"] == 3
    assert rows(shared) == 9


def test_shared_cache_can_be_turned_off(shared, asr_calls, noise_floor, monkeypatch):
    noise_floor()
    off = noise_floor("--no-shared-cache")
    assert len(asr_calls) == 6 and counts(off)["transcripts_computed"] == 3
    assert off["config"]["shared_cache"] is False and off["run"]["shared_cache"]["enabled"] is False
    assert off["asr"]["cache"] is None
    monkeypatch.setenv(shared_cache.ENV_OFF, "1")
    assert counts(noise_floor())["transcripts_computed"] == 3 and len(asr_calls) == 9
    assert rows(shared) == 3  # nothing stored while off
    monkeypatch.setenv(shared_cache.ENV_OFF, "0")
    assert shared_cache.enabled() and not shared_cache.enabled(no_shared_cache=True)


def test_one_audio_hash_keys_responses_and_transcripts():
    from deeptalk_eval import cache

    assert asr.audio_sha256 is cache.audio_sha256


WRITER = """
import sys
from deeptalk_eval.scoring.asr import TranscriptCache
c = TranscriptCache(sys.argv[1])
for i in range(200):
    c.put(f"{sys.argv[2]}-{i}", "text", "{}")
c.close()
"""


def test_two_processes_write_the_transcript_cache_at_once(tmp_path):
    db = tmp_path / "t.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), name], stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM transcripts").fetchone()[0] == 400
    assert os.path.getsize(db) > 0


def _open_fresh_files_in_step(kind, folder, rounds, barrier, failures):
    from deeptalk_eval.cache import ResponseCache

    n = 0
    for i in range(rounds):
        barrier.wait()  # every process opens the same new file at the same moment
        try:
            path = Path(folder) / f"{i}.sqlite"
            (TranscriptCache(path) if kind == "transcripts" else ResponseCache(path)).close()
        except sqlite3.OperationalError:
            n += 1
    failures.put(n)


@pytest.mark.parametrize("kind", ["transcripts", "responses"])
def test_processes_opening_a_new_cache_file_together_all_succeed(tmp_path, kind):
    # Switching a just-created file to WAL fails at once ("database is locked") when another
    # process holds it, whatever the busy timeout: the opener must retry.
    ctx = multiprocessing.get_context("fork")
    barrier, failures = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_open_fresh_files_in_step, args=(kind, str(tmp_path), 100, barrier, failures))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [failures.get(timeout=5) for _ in procs] == [0, 0, 0, 0]
