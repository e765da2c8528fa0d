"""A task's scoring over its sample records: each scorer on its channel (`text`: the
model's text; `speech`: the Whisper transcript of its audio, the task's outputs
transcribed together first), failed samples' metrics as their `on_failure` says. The ASR
transcriber is loaded only when a task needs it; model-independent work (TTS clips,
transcripts) comes from the shared cache (`shared_cache`)."""
from __future__ import annotations

from typing import Any

from deeptalk_eval import shared_cache
from deeptalk_eval.api import Response
from deeptalk_eval.run.options import RunOptions
from deeptalk_eval.run.outcome import error_text
from deeptalk_eval.scoring.base import SampleView, ScoringContext, get_scorer
from deeptalk_eval.task_config import TaskConfig


class Scoring:
    """Scorers of a task over sample records; the ASR transcriber is made on first need."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self._transcriber = None

    def transcriber(self):
        if self._transcriber is None:
            from deeptalk_eval.scoring.asr import make_transcriber

            backend, sep, name = self.opts.asr.rpartition(":")
            config = {"model": name, "device": self.opts.device, "cache": self.opts.uses_shared_cache}
            if sep:
                config["backend"] = backend
            if self.opts.asr_batch_size is not None:
                config["batch_size"] = self.opts.asr_batch_size
            self._transcriber = make_transcriber(config)
        return self._transcriber

    def cache_counts(self) -> dict[str, int]:
        """Running totals of shared-cache reads and computations (TTS, transcripts)."""
        return shared_cache.counts(self._transcriber)

    def score(self, task: TaskConfig, records: list[dict[str, Any]],
              responses: dict[str, Response | None]) -> dict[str, Any]:
        """Fill record["metrics"] / ["transcripts"]; returns the scorers' shared info."""
        ctx = ScoringContext(task_config=task.raw, judge=self.opts.judge)

        def asr():
            # Any scorer may need ASR (e.g. the noise floor transcribes gold-answer speech):
            # it gets the run's --asr model, loaded on first use and recorded in the results.
            t = self.transcriber()
            ctx.info.setdefault("asr", t.info)
            return t

        def transcribe(audio, id=None):
            return asr()(audio, id=id)

        def transcribe_many(audios, ids=None):
            return asr().transcribe_many(audios, ids=ids, progress=self.opts.progress, skip_invalid=True)

        ctx.transcribe, ctx.transcribe_many = transcribe, transcribe_many
        if task.needs_asr:
            ctx.info["asr"] = self.transcriber().info
        fns = [(spec, get_scorer(spec.name)) for spec in task.scorers]
        # A failed sample counts as its metrics' on_failure says, whatever a scorer makes of
        # it; only ratio denominators (e.g. reference word counts) are kept to weigh it.
        denominators = {m.denominator for m in task.metrics if m.aggregation == "ratio"}
        if any(spec.channel == "speech" for spec, _ in fns):
            self._transcribe_speech(records, responses, ctx)
        self._prepare(fns, records, ctx)
        for rec in records:
            resp = responses.get(rec["id"])
            rec.setdefault("transcripts", {})
            metrics: dict[str, float | None] = {}
            for spec, fn in fns:
                if spec.channel == "speech":
                    if resp is not None and "speech" not in rec["transcripts"]:
                        rec["transcripts"]["speech"] = ctx.transcribe(resp.audio, id=rec["id"])
                    channel_text = rec["transcripts"].get("speech")
                else:
                    channel_text = resp.text if resp is not None else None
                # a rescore whose log lost an output wav: the answer had audio, only its samples are gone
                gone = resp is not None and resp.audio is None and bool((rec.get("output") or {}).get("audio"))
                view = SampleView(doc=rec["doc"], response=resp, channel=spec.channel,
                                  channel_text=channel_text, error=rec.get("error"), audio_gone=gone)
                try:
                    values = fn(view, ctx, **spec.args)
                except Exception as e:
                    values = {}
                    if not rec.get("error"):
                        rec["error"] = f"scorer {spec.name}: {error_text(e)}"
                        rec["error_stage"] = "scoring"
                for k, v in (values or {}).items():
                    metrics[spec.prefix + k] = None if v is None else float(v)
            if rec.get("error"):
                metrics = {k: (v if k in denominators else None) for k, v in metrics.items()}
            rec["metrics"] = metrics
        return ctx.info

    @staticmethod
    def _prepare(fns, records: list[dict[str, Any]], ctx: ScoringContext) -> None:
        """Scorers' batch work before the per-sample calls (`prepare`, scoring/base.py)."""
        docs = [rec["doc"] for rec in records if not rec.get("error")]
        for spec, fn in fns:
            prepare = getattr(fn, "prepare", None)
            if prepare is None or not docs:
                continue
            try:
                prepare(docs, ctx, **spec.args)
            except Exception as e:  # the per-sample calls do the work and report each failure
                ctx.info.setdefault("prepare_failed", {})[spec.name] = error_text(e)

    def _transcribe_speech(self, records: list[dict[str, Any]], responses: dict[str, Response | None],
                           ctx: ScoringContext) -> None:
        """The task's spoken outputs transcribed together before the scorers run: cached
        transcripts read first, the misses decoded in batches (`Transcriber.transcribe_many`).
        Audio that cannot be transcribed (NaN ...) is left to the per-sample path, which
        reports it as before."""
        todo = [rec for rec in records
                if responses.get(rec["id"]) is not None and "speech" not in rec.setdefault("transcripts", {})]
        if not todo:
            return
        t = self.transcriber()
        ctx.info.setdefault("asr", t.info)
        texts = t.transcribe_many([responses[rec["id"]].audio for rec in todo], ids=[rec["id"] for rec in todo],
                                  progress=self.opts.progress, skip_invalid=True)
        for rec, text in zip(todo, texts):
            if text is not None:
                rec["transcripts"]["speech"] = text
