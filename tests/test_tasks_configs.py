"""Every bundled task file validates, loads its docs offline (a hub-only task: its documented
example doc), and declares only metrics its scorers produce (checked by running each scorer
on a hand-made response)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from deeptalk_eval.api import Audio, Response  # noqa: E402
from deeptalk_eval.scoring.base import SampleView, ScoringContext, get_scorer  # noqa: E402
from deeptalk_eval.task_config import load_task  # noqa: E402
from deeptalk_eval.task_docs import example_docs, load_docs  # noqa: E402
from deeptalk_eval.task_yaml import is_template  # noqa: E402

TASKS = Path(__file__).resolve().parents[1] / "tasks"
FILES = sorted(p for p in TASKS.rglob("*.yaml") if "lm_eval" not in p.relative_to(TASKS).parts
               and not is_template(p))
FAMILIES = {"spoken_qa", "text_retention", "asr", "tts", "latency", "voicebench"}
ONLINE_GROUP = "spoken_qa_online"
# Hub-only task families: their own group, never part of an offline run.
ONLINE_GROUPS = {ONLINE_GROUP, "voicebench"}
# Scorers that need TTS + ASR models; test_noise_floor_end_to_end runs the real one.
HEAVY_SCORERS = {"gold_answer_asr"}
# Scorers that ask an LLM judge for a reply: run here on an empty reply, which needs none.
JUDGED_SCORERS = {"judge_rating"}

EVENTS = [{"kind": "mark", "t_rel": 0.05, "name": "prefill_done"},
          {"kind": "text", "t_rel": 0.1, "n_chars": 5},
          {"kind": "audio", "t_rel": 0.2, "n_samples": 2400, "sr": 24000, "rms": 0.1},
          {"kind": "end", "t_rel": 0.3}]


@pytest.fixture(scope="module")
def configs():
    return {p: load_task(p) for p in FILES}


def test_every_family_has_tasks(configs):
    assert {p.relative_to(TASKS).parts[0] for p in configs} == FAMILIES
    names = [c.name for c in configs.values()]
    assert len(names) == len(set(names))


def test_required_fields(configs):
    for path, cfg in configs.items():
        assert cfg.version is not None and cfg.description.strip(), path
        family = path.relative_to(TASKS).parts[0]
        assert cfg.groups and (family in cfg.groups or cfg.groups == [ONLINE_GROUP]), path
        if set(cfg.groups) & ONLINE_GROUPS or (cfg.kind != "lm_eval" and cfg.data_path is None):
            # online-only: no local data, so never part of an offline run
            assert cfg.data_path is None and cfg.hub and len(cfg.groups) == 1, path
            assert cfg.groups[0] in ONLINE_GROUPS, path


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_docs_load_and_metrics_are_produced(configs, path):
    cfg = configs[path]
    if cfg.kind == "lm_eval" or (cfg.data_path is None and cfg.example is None):
        pytest.skip("lm-eval tasks: test_tasks_retention.py; online tasks without an example need the hub")
    # also runs process_docs, which registers task-local scorers
    docs = example_docs(cfg) if cfg.data_path is None else load_docs(cfg)
    assert docs, path
    doc = docs[0]
    resp = Response(text="Paris. The morning train was late.", audio=Audio(np.zeros(2400), 24000),
                    extra={"events": EVENTS, "request_index": 5})
    produced: set[str] = set()
    for spec in cfg.scorers:
        fn = get_scorer(spec.name)
        if spec.name in HEAVY_SCORERS:
            produced |= {spec.prefix + k for k in ("acc", "acc_whisper_norm", "no_answer")}
            continue
        text = "" if spec.name in JUDGED_SCORERS else "paris the train was late"
        view = SampleView(doc=doc, response=resp, channel=spec.channel, channel_text=text)
        values = fn(view, ScoringContext(task_config=cfg.raw), **spec.args)
        produced |= {spec.prefix + k for k in values}
    for m in cfg.metrics:
        needed = [m.numerator, m.denominator] if m.aggregation == "ratio" else [m.name]
        missing = [n for n in needed if n not in produced]
        assert not missing, f"{path.name}: metric {m.name} needs {missing}; scorers produce {sorted(produced)}"


def test_offline_sizes(configs):
    by_name = {c.name: c for c in configs.values()}
    n = {name: len(load_docs(by_name[name])) for name in
         ("spoken_qa_factoid_s2s", "spoken_qa_control_silent", "asr_alsa_recordings",
          "asr_synth_flite_slt", "tts_repeat_sentence", "latency_spoken")}
    assert n["spoken_qa_factoid_s2s"] >= 300 and n["spoken_qa_control_silent"] == 100
    assert n["asr_alsa_recordings"] == 8 and n["asr_synth_flite_slt"] >= 30
    assert n["tts_repeat_sentence"] == 100 and n["latency_spoken"] == 20


def test_alsa_transcripts_come_from_file_names(configs):
    cfg = next(c for c in configs.values() if c.name == "asr_alsa_recordings")
    docs = load_docs(cfg)
    assert all(Path(d["audio"]).is_file() for d in docs)
    assert {d["text"] for d in docs} >= {"front left", "rear right", "side left", "front center"}
    assert not any("noise" in d["text"] for d in docs)


@pytest.mark.slow
def test_noise_floor_end_to_end(configs):
    """The real noise-floor scorer: Piper speaks the gold answers, Whisper tiny.en transcribes."""
    cfg = next(c for c in configs.values() if c.name == "spoken_qa_asr_noise_floor")
    docs = {d["id"]: d for d in load_docs(cfg)}
    from deeptalk_eval.scoring.asr import make_transcriber

    score = get_scorer("gold_answer_asr")
    asr = make_transcriber({"model": "tiny.en"})  # the runner hands every scorer the run's --asr
    ctx = ScoringContext(task_config=cfg.raw, transcribe=asr)
    spec = cfg.scorers[0]
    out = [score(SampleView(doc=docs[i], response=None, channel="text", channel_text=None), ctx, **spec.args)
           for i in ("europe-020", "asia-003", "elements-026")]  # Berlin, Canberra, Iron
    assert [o["acc"] for o in out] == [1.0, 1.0, 1.0]
    assert ctx.info["noise_floor_tts"]["voice"] == "joe"
    with pytest.raises(ValueError, match="needs the harness's ASR"):
        score(SampleView(doc=docs["europe-020"], response=None, channel="text", channel_text=None),
              ScoringContext(task_config=cfg.raw), **spec.args)


@pytest.mark.slow
def test_alsa_recordings_are_what_their_names_say():
    """Whisper tiny.en on the real recordings: the file-name transcripts are right."""
    from deeptalk_eval.audio_files import read_wav
    from deeptalk_eval.scoring.asr import make_transcriber
    from deeptalk_eval.scoring.wer import corpus_wer

    cfg = load_task(TASKS / "asr" / "asr_alsa_recordings.yaml")
    docs = load_docs(cfg)
    transcribe = make_transcriber(None)
    hyps = [transcribe(read_wav(Path(d["audio"])), id=d["id"]) for d in docs]
    assert corpus_wer([d["text"] for d in docs], hyps).corpus_wer <= 0.25, hyps


def test_noise_floor_transcribes_its_gold_answers_together(configs, one_torch_thread):
    """The noise floor's `prepare` speaks every gold answer and transcribes them in one batch: the
    same transcripts and metrics as one by one; a doc it cannot speak fails on its own."""
    cfg = next(c for c in configs.values() if c.name == "spoken_qa_asr_noise_floor")
    docs = {d["id"]: d for d in load_docs(cfg)}
    from deeptalk_eval.scoring.asr import make_transcriber

    score = get_scorer("gold_answer_asr")
    asr = make_transcriber({"model": "tiny.en", "cache": False})
    spec = cfg.scorers[0]
    chosen = [docs[i] for i in ("europe-020", "asia-003", "elements-026", "state-029")]
    broken = {**chosen[0], "id": "no-answer", "answer": ""}

    def views(ds):
        return [SampleView(doc=d, response=None, channel="text", channel_text=None) for d in ds]

    alone_ctx = ScoringContext(task_config=cfg.raw, transcribe=asr)
    alone = [score(v, alone_ctx, **spec.args) for v in views(chosen)]
    batches = []

    def transcribe_many(audios, ids=None):
        batches.append(list(ids))
        return asr.transcribe_many(audios, ids=ids, progress=False, skip_invalid=True)

    ctx = ScoringContext(task_config=cfg.raw, transcribe=None, transcribe_many=transcribe_many)
    score.prepare(chosen + [broken], ctx, **spec.args)
    assert batches == [[d["id"] for d in chosen]]
    together = [score(v, ctx, **spec.args) for v in views(chosen)]  # no per-sample ASR left to call
    assert together == alone
    with pytest.raises(ValueError, match="needs fields"):
        score(views([broken])[0], ctx, **spec.args)
