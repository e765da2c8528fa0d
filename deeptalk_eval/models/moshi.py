"""Moshi (Kyutai) behind the SpokenModel interface, on transformers' `MoshiForConditionalGeneration`.

    deeptalk-eval --model moshi --model-args path=kmhf/hf-moshiko,answer_seconds=10 ...

Moshi is full-duplex: it hears the user's audio stream and speaks its own stream at the same
time, 12.5 frames a second (80 ms each), with no turns. Its text channel is an "inner
monologue": the text of what it is saying, time-aligned with its own speech, not a separate
written answer. transformers' `generate` takes three aligned prompt streams (the user's
audio, Moshi's audio, Moshi's text) and then continues Moshi's streams while it feeds the
user stream with silence: "the user is assumed silent while it speaks".

How a request is answered (and how the answer window is cut):

1. The user's audio (any sample rate) is resampled to Mimi's rate (24 kHz) with
   `scipy.signal.resample_poly` and padded with zeros to a whole number of 80 ms frames:
   `P = ceil(samples / 1920)` prompt frames.
2. Prompt: `user_input_values` = that audio; `moshi_input_values` = zeros of the same length
   (Moshi listens silently while the user speaks); `input_ids` = P text padding tokens
   (Moshi thinks nothing yet), as transformers' Moshi documentation prescribes.
3. `generate(..., max_new_tokens=N)` with `N = ceil(answer_seconds * 12.5)` (model arg
   `answer_seconds`, default 10): for each of the N steps the user stream gets one frame of
   silence (transformers' `blank_user_audio_codes`, the Mimi codes of 80 ms of zeros). This
   is the silence appended after the user's audio; Moshi may answer in it.
4. The answer window is everything Moshi produced after the end of the user's audio: the
   waveform from sample `P * 1920` on (the first P frames of the decoded output are the
   silent prompt) and the text tokens after the P prompt tokens (and the one start token
   transformers prepends). Its length is `N - 1` frames of audio (the delay pattern of
   Moshi's codebooks costs one frame) and N text tokens. Nothing is trimmed inside the
   window: a late answer, or silence, is scored as it is.
5. The inner-monologue text is decoded with the padding and special tokens dropped.

Not streaming here (transformers returns the whole window at once): `capabilities.streaming`
is False, and the only timing is when `generate` returned (`first_audio` = the whole
answer). Real-time Moshi streams frame by frame; its latency needs Kyutai's own server.
No text input (Moshi has no text-user channel), no history, no text scoring. A task's
system text is not sent (recorded in `extra["system_not_sent"]`); the request's
`max_new_tokens` is ignored (Moshi's steps are 80 ms frames; `answer_seconds` sets them).

Sampling: `sampling=model` (default) uses the checkpoint's generation config (Moshi is
meant to sample: greedy decoding tends to stay silent); `sampling=request` follows the
request (temperature 0: greedy text and audio codes). Either way torch is seeded with the
request's seed, else `seed=` (default 0), before every `generate`, so a cached answer is
what a rerun on the same machine gives.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

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
from deeptalk_eval.models.hf_speech import (
    args_digest,
    check_path,
    checkpoint_digest,
    load_errors,
    load_failure,
    nonstreaming_events,
    resample,
    resolve_device_dtype,
)

SAMPLING = ("model", "request")


class Moshi(SpokenModel):
    """Moshi: speech in; speech out with its inner-monologue text.

    model_args: path (kmhf/hf-moshiko; kmhf/hf-moshika is the female voice), dtype (auto:
    bfloat16 on CUDA, float32 on CPU), device (auto), answer_seconds (10: the silence after
    the user's audio in which Moshi answers), sampling (model | request), seed (0),
    trust_remote_code (false).
    """

    name = "moshi"
    capabilities = Capabilities(text_in=False, audio_in=True, text_out=True, audio_out=True, streaming=False,
                                loglikelihood=False)
    max_batch_size: ClassVar[int] = 1
    default_path: ClassVar[str] = "kmhf/hf-moshiko"

    def __init__(self, path: str | None = None, dtype: str = "auto", device: str = "auto",
                 answer_seconds: float = 10.0, sampling: str = "model", seed: int = 0,
                 trust_remote_code: bool = False):
        path = str(path or self.default_path)
        super().__init__(path=path, dtype=dtype, device=device, answer_seconds=answer_seconds, sampling=sampling,
                         seed=seed, trust_remote_code=trust_remote_code)
        import torch
        from transformers import AutoFeatureExtractor, AutoTokenizer, MoshiForConditionalGeneration

        if sampling not in SAMPLING:
            raise UsageError(f"model arg sampling={sampling!r}: use one of {list(SAMPLING)}")
        self.path = path
        self.sampling = sampling
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        if answer_seconds <= 0:
            raise UsageError(f"model arg answer_seconds={answer_seconds!r} must be > 0")
        self.answer_seconds = answer_seconds
        self.seed = seed
        trc = trust_remote_code
        check_path(path, "moshi")
        try:
            self.model = MoshiForConditionalGeneration.from_pretrained(
                path, dtype=self.dtype, device_map={"": str(self.device)}, trust_remote_code=trc).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trc)
            self.feature_extractor = AutoFeatureExtractor.from_pretrained(path, trust_remote_code=trc)
        except load_errors() as e:  # no such hub id, or offline without a cached copy
            raise load_failure("moshi", path, e) from None
        cfg = self.model.config
        self.sample_rate = int(cfg.sampling_rate)
        self.frame_rate = float(cfg.audio_encoder_config.frame_rate)
        self.frame_samples = int(round(self.sample_rate / self.frame_rate))
        fe_rate = int(getattr(self.feature_extractor, "sampling_rate", self.sample_rate))
        if fe_rate != self.sample_rate:
            raise UsageError(f"moshi: feature extractor rate {fe_rate} != Mimi's {self.sample_rate} in {path}")
        self.pad_id = self._text_pad_id()
        self.answer_frames = math.ceil(self.answer_seconds * self.frame_rate)
        self._digest: str | None = None
        torch.manual_seed(self.seed)

    def _text_pad_id(self) -> int:
        """Moshi's text padding token: "<pad>" in its tokenizer, as transformers' Moshi
        documentation builds the prompt (`tokenizer.encode("<pad>")`), else a declared pad id."""
        pad = self.tokenizer.convert_tokens_to_ids("<pad>")
        if isinstance(pad, int) and pad != self.tokenizer.unk_token_id:
            self.pad_source = "tokenizer token <pad>"
            return pad
        for source, candidate in (("tokenizer.pad_token_id", self.tokenizer.pad_token_id),
                                  ("generation_config.pad_token_id", self.model.generation_config.pad_token_id),
                                  ("config.pad_token_id", getattr(self.model.config, "pad_token_id", None))):
            if isinstance(candidate, int):
                self.pad_source = source
                return candidate
        raise UsageError(f"moshi: {self.path} names no text padding token (tokenizer, generation config or config)")

    # -- identity -------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        if self._digest is None:
            self._digest = checkpoint_digest(self.path)
        return f"moshi:{self._digest[:16]}:{args_digest(self.args)}:dtype={self.dtype}"

    def describe(self) -> dict[str, Any]:
        gen = self.model.generation_config.to_diff_dict()
        return {
            "path": self.path,
            "class": type(self.model).__name__,
            "checkpoint_digest": checkpoint_digest(self.path),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "answer_seconds": self.answer_seconds,
            "answer_frames": self.answer_frames,
            "answer_window": "Moshi's output after the end of the user's audio, while the user stream is silent",
            "text_channel": "inner monologue (the text of what Moshi says, aligned with its speech)",
            "text_pad_id": self.pad_id,
            "text_pad_from": self.pad_source,
            "sampling": self.sampling,
            "generation_config": gen,
            "seed": self.seed,
            "full_duplex": True,
            "streaming": False,
            "first_audio": "the whole answer window, when generate returns (transformers has no audio streaming)",
            "max_batch_size": self.max_batch_size,
        }

    # -- generation -----------------------------------------------------------------------------
    def _run(self, request: Request) -> tuple[str, Audio, dict[str, float], dict[str, Any], dict[str, int]]:
        import torch

        where = f"request {request.id}"
        if request.output_modality not in ("text", "speech", "both"):
            raise UnsupportedRequest(f"{where}: unknown output modality {request.output_modality!r}")
        if request.audio is None:
            raise UnsupportedRequest(f"{where}: Moshi takes speech only (it has no text input channel)")
        if request.history:
            raise UnsupportedRequest(f"{where}: Moshi has no turns to replay (history of {len(request.history)})")
        if request.raw_prompt:
            raise UnsupportedRequest(f"{where}: Moshi cannot take a raw text prompt")
        extra: dict[str, Any] = {"streaming": False, "full_duplex": True, "first_audio_is_whole_answer": True,
                                 "text_channel": "inner_monologue"}
        if request.system:
            extra["system_not_sent"] = request.system
        if request.text and request.text.strip():
            extra["text_not_sent"] = request.text  # an instruction beside the audio: Moshi cannot read it
        extra["max_new_tokens_ignored"] = request.options.max_new_tokens
        wav = resample(request.audio, self.sample_rate, where)
        prompt_frames = math.ceil(wav.size / self.frame_samples)
        wav = np.pad(wav, (0, prompt_frames * self.frame_samples - wav.size))
        limit = int(self.model.config.max_position_embeddings)
        if 1 + prompt_frames + self.answer_frames > limit:
            raise UnsupportedRequest(f"{where}: {wav.size / self.sample_rate:.1f} s of audio + {self.answer_seconds} s "
                                     f"of answer exceed Moshi's {limit} frames ({limit / self.frame_rate:.0f} s)")
        user = self.feature_extractor(raw_audio=wav, sampling_rate=self.sample_rate, return_tensors="pt").input_values
        user = user.to(self.device, self.dtype)
        input_ids = torch.full((1, prompt_frames), self.pad_id, dtype=torch.long, device=self.device)
        marks = {"inputs_ready": time.monotonic()}
        gen: dict[str, Any] = {"max_new_tokens": self.answer_frames, "return_audio_waveforms": True}
        opts = request.options
        if self.sampling == "request":
            sample = opts.temperature > 0
            gen.update(do_sample=sample, depth_decoder_do_sample=sample)
            if sample:
                gen.update(temperature=opts.temperature, top_p=opts.top_p,
                           depth_decoder_temperature=opts.temperature, depth_decoder_top_p=opts.top_p)
        seed = opts.seed if opts.seed is not None else self.seed
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, user_input_values=user,
                                      moshi_input_values=torch.zeros_like(user), **gen)
        t_done = time.monotonic()
        # the text: one start token, the P prompt pads, then one token per generated frame
        ids = out.sequences[0, 1 + prompt_frames:].tolist()
        drop = set(self.tokenizer.all_special_ids) | {self.pad_id, int(self.model.config.vocab_size)}
        words = [i for i in ids if i not in drop]
        text = " ".join(self.tokenizer.decode(words, skip_special_tokens=True).split())
        samples = out.audio_sequences.detach().float().cpu().numpy().reshape(-1)
        cut = prompt_frames * self.frame_samples
        if samples.size < cut:  # never seen: the decoded output must hold the prompt's frames
            raise RuntimeError(f"{where}: Moshi's output ({samples.size} samples) is shorter than its prompt ({cut})")
        answer = Audio(samples[cut:], self.sample_rate)
        extra.update(
            user_audio_s=round(request.audio.duration, 3), prompt_frames=prompt_frames,
            answer_window={"starts_at_s": round(cut / self.sample_rate, 3), "frames": self.answer_frames,
                           "audio_s": round(answer.duration, 3)},
            seed=seed, sampling=self.sampling, inner_monologue=text, inner_monologue_tokens=len(words),
            t_generate_s=round(t_done - marks["inputs_ready"], 3),
        )
        return text, answer, marks, extra, {"prompt_frames": prompt_frames, "text": len(ids), "text_words": len(words)}

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """The answer window when `generate` returns: mark `inputs_ready`, then the
        inner-monologue text, the audio and the end (prompt, tokens and the extra facts),
        stamped at return. Not streaming."""
        text, audio, marks, extra, tokens = self._run(request)
        want_text = request.output_modality in ("text", "both")
        want_audio = request.output_modality in ("speech", "both")
        prompt = f"<user audio: {tokens['prompt_frames']} frames> + <silence: {self.answer_frames} frames>"
        yield from nonstreaming_events(text if want_text else None, audio if want_audio else None,
                                       time.monotonic(), marks, info={"prompt": prompt, "tokens": tokens, **extra})

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        out = []
        for r in requests:  # one at a time
            resp = collect_stream(self.stream(r))
            if r.output_modality in ("text", "both"):
                resp.text = resp.text or ""
            if r.output_modality in ("speech", "both") and resp.audio is None:
                resp.audio = Audio(np.zeros(0, np.float32), self.sample_rate)
            out.append(resp)
        return out
