"""Batched transcription of spoken outputs (`Transcriber.transcribe_many`, the runner's
`Scoring._transcribe_speech`): the same transcripts as one by one with the real Whisper
tiny.en on real Piper speech, cached transcripts never reach a batch."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from deeptalk_eval.api import Audio, Response
from deeptalk_eval.scoring.asr import make_transcriber, resolve_config

SENTENCES = [
    "The morning train was late because of snow on the tracks.",
    "Please close the window before you leave the room.",
    "My grandmother keeps a small garden behind her house.",
    "Water boils at one hundred degrees Celsius at sea level.",
]


@pytest.fixture(scope="module")
def piper_clips():
    tts = pytest.importorskip("deeptalk_common.tts")
    if not tts.engine_available("piper"):
        pytest.skip("Piper is not installed")
    return [Audio(*tts.synthesize(s, engine="piper", voice="joe")) for s in SENTENCES]


@pytest.fixture(scope="module")
def whisper_tiny(one_torch_thread):
    t = make_transcriber({"model": "tiny.en", "cache": False})
    _ = t.model  # load once for the module
    return t


def _sharing(model_of, **config):
    t = make_transcriber({"model": "tiny.en", **config})
    t._model = model_of.model  # the same weights, loaded once per module
    return t


def test_batched_equals_one_by_one_on_real_speech(piper_clips, whisper_tiny):
    one = [whisper_tiny(a) for a in piper_clips]
    silent = Audio(np.zeros(16000, np.float32), 16000)
    audios = [piper_clips[0], None, *piper_clips[1:], silent]
    calls = whisper_tiny.model_calls
    batched = whisper_tiny.transcribe_many(audios, progress=False, batch_size=3)
    assert batched == [one[0], "", *one[1:], ""]
    assert whisper_tiny.model_calls - calls == len(piper_clips)  # None and silence never reach Whisper
    assert all(t for t in one)  # real speech: real transcripts
    assert "snow" in one[0].lower() and "window" in one[1].lower()


def test_cached_transcripts_skip_the_batch(tmp_path, piper_clips, whisper_tiny, monkeypatch):
    t = _sharing(whisper_tiny, cache=str(tmp_path / "t.sqlite"), batch_size=8)
    first = t.transcribe_many(piper_clips[:2], progress=False)
    assert t.model_calls == 2 and t.cache_hits == 0
    batches = []
    real = t._run_batch
    monkeypatch.setattr(t, "_run_batch", lambda xs: batches.append(len(xs)) or real(xs))
    again = t.transcribe_many(piper_clips, progress=False)
    assert again[:2] == first
    assert t.cache_hits == 2 and t.model_calls == 4
    assert batches == [2]  # only the two misses were decoded, together
    # all cached: nothing decoded, Whisper not even loaded by a fresh transcriber
    fresh = make_transcriber({"model": "tiny.en", "cache": str(tmp_path / "t.sqlite"), "batch_size": 8})
    assert fresh.transcribe_many(piper_clips, progress=False) == again
    assert fresh.model_calls == 0 and fresh.cache_hits == 4 and fresh._model is None


def test_invalid_audio_is_per_sample(whisper_tiny):
    bad = np.full(1600, 0.1, np.float32)
    bad[5] = np.nan
    audios = [Audio(bad, 16000)]
    with pytest.raises(ValueError, match="'q1'"):
        whisper_tiny.transcribe_many(audios, ids=["q1"], progress=False)
    assert whisper_tiny.transcribe_many(audios, ids=["q1"], progress=False, skip_invalid=True) == [None]


def test_batch_size_config_and_info():
    assert resolve_config(None)["batch_size"] >= 1
    t = make_transcriber({"model": "tiny.en", "cache": False, "batch_size": 4})
    assert t.info["batching"]["batch_size"] == 4 and "decode" in t.info["batching"]["method"]
    # how many clips share a decoding call keys no transcript
    assert t.config_key == make_transcriber({"model": "tiny.en", "cache": False, "batch_size": 1}).config_key
    with pytest.raises(ValueError, match="batch_size"):
        make_transcriber({"model": "tiny.en", "cache": False, "batch_size": 0})


class _Recorder:
    """Stands in for a Transcriber: records what the runner asks of it."""

    info = {"backend": "fake"}
    cache_hits = model_calls = 0

    def __init__(self):
        self.calls = []

    def transcribe_many(self, audios, ids=None, progress=True, skip_invalid=False):
        self.calls.append(list(ids))
        return [None if i == "bad" else f"said {i}" for i in ids]


def test_runner_transcribes_a_tasks_outputs_together():
    from deeptalk_eval.run.options import RunOptions
    from deeptalk_eval.run.scoring_pass import Scoring
    from deeptalk_eval.scoring.base import ScoringContext

    scoring = Scoring(RunOptions(progress=False, asr_batch_size=4))
    rec = _Recorder()
    scoring._transcriber = rec
    a = Audio(np.zeros(10, np.float32), 16000)
    records = [{"id": i} for i in ("a", "b", "failed", "done", "bad")]
    records[3]["transcripts"] = {"speech": "from an earlier scoring"}
    responses = {"a": Response(audio=a), "b": Response(audio=a), "failed": None, "done": Response(audio=a),
                 "bad": Response(audio=a)}
    ctx = ScoringContext(task_config={})
    scoring._transcribe_speech(records, responses, ctx)
    assert rec.calls == [["a", "b", "bad"]]  # one call: no failed sample, nothing already transcribed
    assert [r.get("transcripts", {}).get("speech") for r in records] == ["said a", "said b", None,
                                                                  "from an earlier scoring", None]
    assert ctx.info["asr"] == {"backend": "fake"}


def test_runner_passes_the_asr_batch_size():
    from deeptalk_eval.run.options import RunOptions
    from deeptalk_eval.run.scoring_pass import Scoring

    t = Scoring(RunOptions(asr_batch_size=5, shared_cache=False)).transcriber()
    assert t.batch_size == 5


def test_cli_asr_batch_size(cli, scripted):
    from deeptalk_eval.cli import build_parser, options_from_args

    args = build_parser().parse_args(["run", "--model-path", scripted, "--tasks", "x", "--asr-batch-size", "4"])
    assert options_from_args(args).asr_batch_size == 4
    code, out, err = cli("run", "--model-path", scripted, "--tasks", "x", "--asr-batch-size", "0")
    assert code == 2 and "--asr-batch-size: expected a positive integer" in err
