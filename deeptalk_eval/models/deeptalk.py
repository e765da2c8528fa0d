"""The reference DeepTalk model behind the SpokenModel interface.

    deeptalk-eval --model deeptalk                                  # the shipped checkpoint
    deeptalk-eval --model deeptalk --model-args path=runs/tiny/stage-3,first_chunk_frames=2

Loads a checkpoint directory written by `deeptalk-train` (or the shipped reference in the
same layout), hears through its Whisper encoder + projector, speaks through its codec, and
streams with `deeptalk.generate.SpeechGenerator`: text deltas, audio chunks and the marks
encoder_done / prefill_done / first_chunk_decoded. Text scoring (retention) goes through
the same lm-eval conventions as the base-LLM baseline, on the model's text path.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeptalk_common.content_memo import ContentMemo
from deeptalk_common.dtypes import torch_dtype
from deeptalk_eval.api import (
    Audio,
    Capabilities,
    Request,
    Response,
    SpokenModel,
    StreamEvent,
    UnsupportedRequest,
    collect_stream,
)
from deeptalk_eval.errors import UsageError
from deeptalk_eval.models.text_llm import BaseLLM, TextPathScoring
from deeptalk_eval.stop_strings import StopCut

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "reference"
OUTPUTS = {"text": "text", "speech": "speech", "both": "both"}


# files of a checkpoint folder kept as the record of its training, not read to answer
TRAINING_RECORDS = ("stage.json", "training.json", "summary.json", "assignment.json", "recipe.yaml")


def reads_at_inference(name: str) -> bool:
    if name in TRAINING_RECORDS or name.startswith(("loss", "modality_load", "hearing_curve")):
        return False
    return name.endswith((".safetensors", ".json", ".jinja", ".model", ".txt"))


class DeepTalkAdapter(TextPathScoring, SpokenModel):
    name = "deeptalk"
    capabilities = Capabilities(text_in=True, audio_in=True, text_out=True, audio_out=True, streaming=True,
                                loglikelihood=True)
    # greedy rows decoded together give the one-by-one answers, 1.65x faster on spoken answers at 8
    # (benchmarks/results/batched_decoding.json; gk_dev_t2t: 200 of 200 answers identical) and
    # 1.3-1.5x faster again at 16, the same 32 of 32 spoken answers (batch_size_t2s.json). The
    # runner hands over 64 at a time; 16 rows (model arg `rows`) decode together, each answer that
    # ends giving its row to the next request (benchmarks/results/continuous_batching.json)
    greedy_batch_size = 64

    def __init__(self, path: str | None = None, device: str = "cpu", dtype: str = "float32",
                 routing_mode: str | None = None, first_chunk_frames: int = 2, chunk_frames: int = 10,
                 max_speech_steps: int = 400, batch_parallel: bool = False, codec: str | None = None,
                 loglikelihood_batch_size: int = 8, threads: int | None = None, cache: str | None = None,
                 decode_threads: int | None = None, hearing: str | None = None, written: str | None = None,
                 lead_text: bool = False, rows: int = 16, decoder_min_first: int | None = None,
                 decoder_min_chunk: int | None = None):
        # lead_text and the phone codec's chunk sizes are recorded (and fingerprinted) only when set:
        # answers cached before they existed stay valid
        super().__init__(path=path, device=device, dtype=dtype, routing_mode=routing_mode,
                         first_chunk_frames=first_chunk_frames, chunk_frames=chunk_frames,
                         max_speech_steps=max_speech_steps, batch_parallel=batch_parallel, codec=codec,
                         loglikelihood_batch_size=loglikelihood_batch_size, threads=threads, cache=cache,
                         decode_threads=decode_threads, hearing=hearing, written=written, rows=rows,
                         **({"lead_text": True} if lead_text else {}),
                         **{k: v for k, v in (("decoder_min_first", decoder_min_first),
                                              ("decoder_min_chunk", decoder_min_chunk)) if v is not None})
        from deeptalk.checkpoint import load_checkpoint
        from deeptalk.generate import SpeechGenerator, StreamConfig

        ckpt = Path(path) if path else DEFAULT_CHECKPOINT
        if not ckpt.is_dir():
            raise UsageError(
                f"deeptalk: checkpoint directory {ckpt} does not exist"
                + ("" if path else " (the reference checkpoint ships in the repository: is this a partial "
                   "checkout? Or train one: `deeptalk-train --recipe reference "
                   "--export checkpoints/reference`)"))
        try:
            weights_dtype = torch_dtype(dtype, "model arg dtype")
        except ValueError as e:
            raise UsageError(str(e)) from None
        if threads is not None:
            torch.set_num_threads(threads)
        self.rows = BaseLLM.check_rows(rows)
        if hearing not in (None, "greedy", "lexicon"):
            raise UsageError(f"deeptalk: model arg hearing must be 'greedy' or 'lexicon', got {hearing!r}")
        from deeptalk.speech.written_form import FORMS

        if written is not None and written not in FORMS:
            raise UsageError(f"deeptalk: model arg written must be one of {', '.join(FORMS)}, got {written!r}")
        try:
            self.bundle = load_checkpoint(ckpt, device=device, dtype=weights_dtype, codec=codec, decode=hearing,
                                          written=written)
        except ValueError as e:  # hearing=lexicon for a checkpoint whose head cannot spell words
            if hearing is None:
                raise
            raise UsageError(f"deeptalk: {ckpt}: {e}") from None
        model = self.bundle.model
        if routing_mode is not None:
            model.set_routing_mode(routing_mode)
        if cache is None:  # batch-parallel decoding runs on the growing cache
            cache = "dynamic" if batch_parallel else "static"
        self.stream_config = StreamConfig(first_chunk_frames=first_chunk_frames, chunk_frames=chunk_frames,
                                          max_speech_steps=max_speech_steps, batch_parallel=batch_parallel,
                                          cache=cache, decode_threads=decode_threads, lead_text=lead_text,
                                          decoder_min_first=decoder_min_first, decoder_min_chunk=decoder_min_chunk)
        self.generator = SpeechGenerator(model, self.bundle.tokenizer, encoder=self.bundle.encoder,
                                         codec=self.bundle.codec)
        if decoder_min_first is not None or decoder_min_chunk is not None:
            from deeptalk.speech.codec import CodecError

            try:   # a frame codec has no word chunks; a size below 1 is no size
                self.generator.stream_decoder(self.stream_config)
            except (CodecError, ValueError) as e:
                raise UsageError(f"deeptalk: model args decoder_min_first / decoder_min_chunk: {e}") from None
        # generate() hears each distinct audio input once (S2T, S2S and a control share their
        # questions); stream() always hears: it is what latency measures
        self.heard_memo = ContentMemo()

        # lm-eval's conventions for text scoring, shared with the base-LLM baseline: same
        # tokenisation and windows, so retention compares like with like
        self.text_scorer = BaseLLM(path=str(ckpt), device=device, loglikelihood_batch_size=loglikelihood_batch_size,
                                    model=model,
                                    tokenizer=self.bundle.tokenizer, max_length=model.config.max_position_embeddings)
        self._sha: str | None = None

    # -- identity -------------------------------------------------------------------------
    def checkpoint_sha256(self) -> str:
        """sha256 over every file of the checkpoint that inference reads: weights (model, delta,
        projector, codec), the model's, encoder's and codec's configs, the tokenizer and the chat
        template. Not the training records (stage.json, losses, the modality-load heatmap): a
        stride or layout edited in a config is a different model, a new loss plot is not."""
        if self._sha is None:
            h = hashlib.sha256()
            for f in sorted(p for p in self.bundle.path.iterdir() if p.is_file() and reads_at_inference(p.name)):
                h.update(f.name.encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
            self._sha = h.hexdigest()
        return self._sha

    def codec_sha256(self) -> str:
        """sha256 of what the codec records about itself (its file's hash, refiner, vocoder):
        the codec lives outside the checkpoint, and a new decoder changes every spoken answer."""
        return hashlib.sha256(json.dumps(self.bundle.codec.describe(), sort_keys=True, default=str).encode()).hexdigest()

    def hearing_settings(self) -> dict | None:
        """How a piece head's transcript is read, in full (the lexicon decoder's weights and the
        written form, defaults included): the code's defaults change what is heard as much as
        a checkpoint's own settings do. None for a head read greedily or a frame projector."""
        lexicon = getattr(self.bundle.encoder.projector, "lexicon", None)
        return None if lexicon is None else lexicon.config.to_dict()

    def fingerprint(self) -> str:
        # where the checkpoint lies is not what it is: its content is hashed, so a copy elsewhere reuses its answers
        opts = {k: v for k, v in sorted(self.args.items())
                if k not in ("path", "device", "threads", "loglikelihood_batch_size", "rows")}
        hearing = self.hearing_settings()
        heard = "" if hearing is None else \
            f":hearing={hashlib.sha256(json.dumps(hearing, sort_keys=True).encode()).hexdigest()[:16]}"
        return (f"deeptalk:{self.checkpoint_sha256()[:16]}:codec={self.codec_sha256()[:16]}:{opts}"
                f":routing={self.bundle.model.config.routing_mode}{heard}")

    def describe(self) -> dict[str, Any]:
        m = self.bundle.model
        return {
            "checkpoint": str(self.bundle.path),
            "checkpoint_sha256": self.checkpoint_sha256(),
            "stage": self.bundle.info.get("stage"),
            "recipe": self.bundle.info.get("recipe"),
            "routing_mode": m.config.routing_mode,
            "speech_experts": m.config.speech_experts,
            "dtype": str(next(m.parameters()).dtype).replace("torch.", ""),
            "device": str(m.device),
            "parameters": sum(p.numel() for p in m.parameters()),
            "stream": self.stream_config.to_dict(),
            "rows": self.rows,   # greedy answers decoded together, each ended one replaced by the next request
            "batch_parallel": self.stream_config.batch_parallel,
            "first_chunk_frames": self.stream_config.first_chunk_frames,
            "chunk_frames": self.stream_config.chunk_frames,
            "speech_encoder": self.bundle.encoder.config.to_dict(),
            "hearing": self.hearing_settings(),
            "codec": self.bundle.codec.describe(),
            "torch_threads": torch.get_num_threads(),
        }

    # -- generation -------------------------------------------------------------------------
    def _config(self, request: Request):
        from dataclasses import replace

        o = request.options
        steps = self.stream_config.max_speech_steps  # the model arg: this model's cap
        if o.max_speech_steps is not None:  # a task's bound (generation: max_speech_steps) can only lower it
            steps = min(steps, o.max_speech_steps)
        return replace(self.stream_config, max_new_tokens=o.max_new_tokens, temperature=o.temperature,
                       top_p=o.top_p, seed=o.seed, max_speech_steps=steps)

    def _prompt(self, request: Request, t_start: float, memo: ContentMemo | None = None):
        if request.text is None and request.audio is None:
            raise UnsupportedRequest(f"request {request.id}: neither text nor audio")
        history = []
        for i, turn in enumerate(request.history):
            if turn.text is None:
                raise UnsupportedRequest(f"request {request.id} history[{i}]: deeptalk needs the text of earlier turns")
            history.append((turn.role, turn.text))
        speak = request.output_modality in ("speech", "both")
        audio = request.audio
        try:
            return self.generator.prompt(
                text=request.text, audio=None if audio is None else audio.samples,
                sample_rate=None if audio is None else audio.sample_rate, system=request.system,
                history=history, speak=speak, name=f"request {request.id} audio", t_start=t_start,
                raw=request.raw_prompt, memo=memo)
        except ValueError as e:  # bad audio (empty, NaN, ...): a clear per-request error
            raise UnsupportedRequest(str(e)) from None

    def reset_memos(self) -> None:
        self.heard_memo.clear()

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """Text deltas (cut at a stop string), audio chunks, the generator's marks; the end's
        info: prompt, tokens (text, steps, audio_frames), stop_reason, audio_flags."""
        return self._stream(request)

    def _stream(self, request: Request, memo: ContentMemo | None = None) -> Iterator[StreamEvent]:
        if request.output_modality not in OUTPUTS:
            raise UnsupportedRequest(f"request {request.id}: unknown output modality {request.output_modality!r}")
        t0 = time.monotonic()
        prompt = self._prompt(request, t0, memo)
        shown = StopCut(request.options.stop)
        for ev in self.generator.stream(prompt, OUTPUTS[request.output_modality], self._config(request)):
            if ev.kind == "text":
                delta = shown.push(ev.text)
                if delta:
                    yield StreamEvent("text", ev.t, text=delta)
            elif ev.kind == "audio":
                yield StreamEvent("audio", ev.t, audio=Audio(ev.audio, ev.sample_rate))
            elif ev.kind == "mark":
                yield StreamEvent("mark", ev.t, name=ev.name)
            elif ev.kind == "end":
                tail = shown.finish()
                if tail:
                    yield StreamEvent("text", ev.t, text=tail)
                done = ev.info or {}
                yield StreamEvent("end", ev.t, info={
                    "prompt": prompt.rendered,
                    "tokens": {"text": len(done.get("text_ids", [])), "steps": int(done.get("steps", 0)),
                               "audio_frames": int(done.get("frames", 0))},
                    "stop_reason": done.get("stop_reason"), "audio_flags": prompt.audio_flags})

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        if len(requests) > 1:
            return self._generate_batch(requests)
        out = []
        for r in requests:
            resp = collect_stream(self._stream(r, self.heard_memo))
            if r.output_modality in ("speech", "both") and resp.audio is None:
                resp.audio = Audio(np.zeros(0, np.float32), self.bundle.codec.sample_rate)
            out.append(resp)
        return out

    def _generate_batch(self, requests: Sequence[Request]) -> list[Response]:
        """Several requests decoded together (`--batch-size N`): greedy requests with the same
        output and settings share each decoding step; each answer is what `stream()` gives."""
        out: list[Response | None] = [None] * len(requests)
        groups: dict[tuple, tuple[str, Any, list[int]]] = {}
        for i, r in enumerate(requests):
            if r.output_modality not in OUTPUTS:
                raise UnsupportedRequest(f"request {r.id}: unknown output modality {r.output_modality!r}")
            cfg = self._config(r)
            key = (r.output_modality, tuple(sorted(cfg.to_dict().items())))
            groups.setdefault(key, (r.output_modality, cfg, []))[2].append(i)
        for output, cfg, idx in groups.values():
            t0 = time.monotonic()
            prompts = [self._prompt(requests[i], t0, self.heard_memo) for i in idx]
            results = self.generator.generate_batch(prompts, OUTPUTS[output], cfg, rows=self.rows)
            for i, p, res in zip(idx, prompts, results):
                shown = StopCut(requests[i].options.stop)  # the text exactly as stream() shows it
                text = "".join(shown.push(d) for d in self.generator.text_deltas(res.text_ids) if d) + shown.finish()
                audio = None
                if output in ("speech", "both"):
                    audio = Audio(res.audio if res.audio is not None else np.zeros(0, np.float32),
                                  self.bundle.codec.sample_rate)
                frames = 0 if res.codes is None else int(res.codes.shape[1])
                out[i] = Response(text=text or None, audio=audio, timings=res.timings, prompt=p.rendered,
                                  tokens={"text": len(res.text_ids), "steps": res.steps, "audio_frames": frames},
                                  extra={"stop_reason": res.stop_reason, "audio_flags": p.audio_flags,
                                         "batch": len(idx)})
        return out
