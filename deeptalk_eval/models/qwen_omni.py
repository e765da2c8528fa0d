"""Qwen2.5-Omni and Qwen3-Omni behind the SpokenModel interface, on transformers' own classes.

    deeptalk-eval --model qwen2_5_omni --model-args path=Qwen/Qwen2.5-Omni-7B,speaker=Chelsie ...
    deeptalk-eval --model qwen3_omni --model-args path=Qwen/Qwen3-Omni-30B-A3B-Instruct,speaker=Ethan ...

Both are a "thinker" (an audio encoder + a causal LM over text tokens) and a "talker" that
turns the thinker's hidden states into speech codes, decoded to a 24 kHz waveform (Qwen2.5:
DiT + BigVGAN `token2wav`; Qwen3: `code2wav`). What runs is exactly transformers'
`Qwen2_5OmniForConditionalGeneration` / `Qwen3OmniMoeForConditionalGeneration` with the
checkpoint's own processor (`Qwen2_5OmniProcessor` / `Qwen3OmniMoeProcessor`) and chat
template:

- **Input.** Text, speech, or both (the text is an instruction after the audio in the same
  user turn). Speech at any sample rate is resampled to the feature extractor's rate
  (16 kHz) with `scipy.signal.resample_poly`; the Whisper feature extractor truncates input
  longer than its `chunk_length` (recorded in `extra["input_truncated_s"]`). Earlier turns
  are replayed (user turns with their audio, assistant turns as text). `raw_prompt`
  requests (lm-eval contexts) are tokenised as they are, with no template, text out only.
- **System prompt** (`system=`): `model` keeps the model's own system prompt (Qwen2.5-Omni
  speaks only under its "You are Qwen, a virtual human ..." prompt, so this is its default;
  the task's system text is then not sent and is recorded in `extra["system_not_sent"]`),
  `task` sends the task's (Qwen3-Omni's default: it needs no fixed prompt), `model+task`
  appends the task's text to the model's.
- **Output.** The thinker's text (also kept in `extra["thinker_text"]` when only speech is
  asked for; greedy at temperature 0; `seed` makes sampling
  repeatable) and, when speech is asked for, the talker's waveform at 24 kHz in the voice
  `speaker=` (Qwen2.5: the names in the checkpoint's `spk_dict.pt`, Chelsie and Ethan;
  Qwen3: the names in `config.talker_config.speaker_id`, Ethan, Chelsie and Aiden). Text
  out only skips the talker (`return_audio=False`).
- **Not streaming.** transformers' `generate` returns the whole answer at once, so
  `capabilities.streaming` is False (the runner skips stream/latency tasks) and the timings
  are what the API gives: `first_text` = `first_audio` = `total` = the moment `generate`
  returned (the first audio is the whole answer); `extra["streaming"]` is False. `stream()`
  exists for callers that want events, stamped the same way.
- **Batch 1.** transformers speaks at batch size 1 (`NotImplementedError` otherwise): a
  batch of requests is generated one after another (`describe()["max_batch_size"] == 1`).
- **Randomness.** The talker samples by default (the models' own settings) and Qwen2.5's DiT
  starts from noise: torch is seeded with the request's seed, else `seed=` (default 0),
  before every `generate`, so a cached answer is what a rerun on the same machine gives.
- **Text scoring.** `loglikelihood` / `loglikelihood_rolling` run on `model.thinker`, a
  causal LM over text tokens, with the base-LLM baseline's lm-eval conventions
  (`TextPathScoring`), so the text-retention tasks run on these models too.
- Without torchvision the processor's video part is a stand-in that refuses video
  (`describe()["processor_note"]`); speech and text do not need it.
"""
from __future__ import annotations

import hashlib
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
    load_processor,
    nonstreaming_events,
    resample,
    resolve_device_dtype,
)
from deeptalk_eval.models.text_llm import BaseLLM, TextPathScoring
from deeptalk_eval.stop_strings import first_stop

OUTPUT_SAMPLE_RATE = 24000  # both talkers' waveforms (Qwen's model cards: 24 kHz)
QWEN25_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)
SYSTEM_POLICIES = ("model", "task", "model+task")


class _QwenOmni(TextPathScoring, SpokenModel):
    """Shared by both generations; subclasses name the classes, defaults and speakers."""

    capabilities = Capabilities(text_in=True, audio_in=True, text_out=True, audio_out=True, streaming=False,
                                loglikelihood=True)
    max_batch_size: ClassVar[int] = 1
    model_class_name: ClassVar[str]
    processor_class_name: ClassVar[str]
    default_path: ClassVar[str]
    default_speaker: ClassVar[str]
    default_system_policy: ClassVar[str]
    model_system_prompt: ClassVar[str | None]

    def __init__(self, path: str | None = None, dtype: str = "auto", device: str = "auto",
                 speaker: str | None = None, system: str | None = None, talker: bool = True,
                 talker_max_new_tokens: int = 4096, talker_do_sample: bool | None = None,
                 seed: int = 0, loglikelihood_batch_size: int = 8, max_length: int | None = None,
                 attn_implementation: str | None = None, trust_remote_code: bool = False):
        path = str(path or self.default_path)
        speaker = speaker or self.default_speaker
        system = system or self.default_system_policy
        super().__init__(path=path, dtype=dtype, device=device, speaker=speaker, system=system, talker=talker,
                         talker_max_new_tokens=talker_max_new_tokens, talker_do_sample=talker_do_sample, seed=seed,
                         loglikelihood_batch_size=loglikelihood_batch_size, max_length=max_length,
                         attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
        import torch
        import transformers

        if system not in SYSTEM_POLICIES:
            raise UsageError(f"model arg system={system!r}: use one of {list(SYSTEM_POLICIES)}")
        self.path = path
        self.system_policy = system
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        self.use_talker = talker
        self.talker_max_new_tokens = talker_max_new_tokens
        self.talker_do_sample = talker_do_sample
        self.seed = seed
        self.trust_remote_code = trust_remote_code
        model_cls = getattr(transformers, self.model_class_name)
        processor_cls = getattr(transformers, self.processor_class_name)
        kw: dict[str, Any] = {"dtype": self.dtype, "trust_remote_code": self.trust_remote_code}
        if attn_implementation:
            kw["attn_implementation"] = attn_implementation
        if not self.use_talker:
            kw["enable_audio_output"] = False  # the talker is not even built: text out only
        check_path(path, self.name)
        try:
            self.model = model_cls.from_pretrained(path, device_map={"": str(self.device)}, **kw).eval()
            self.processor, self.processor_note = load_processor(processor_cls, path, self.trust_remote_code)
        except load_errors() as e:  # no such hub id, or offline without a cached copy
            raise load_failure(self.name, path, e) from None
        if not self.use_talker and getattr(self.model, "has_talker", False):
            self.model.disable_talker()  # text only: frees the talker's memory
        self.talker_note = None if self.use_talker else "disabled with talker=false"
        if self.use_talker and not getattr(self.model, "has_talker", False):
            self.use_talker, self.talker_note = False, "this checkpoint has none (enable_audio_output is false)"
        self.speakers = self._speakers()
        wanted = {s.lower(): s for s in self.speakers}
        if self.use_talker and speaker.lower() not in wanted:
            raise UsageError(f"model arg speaker={speaker!r}: this checkpoint's speakers are {self.speakers}")
        self.speaker = wanted.get(speaker.lower(), speaker)
        self.tokenizer = self.processor.tokenizer
        self.feature_extractor = self.processor.feature_extractor
        text_config = self.model.config.thinker_config.get_text_config()
        self.text_scorer = BaseLLM(path=path, device=str(self.device), loglikelihood_batch_size=loglikelihood_batch_size,
                                   model=self.model.thinker, tokenizer=self.tokenizer,
                                   max_length=max_length or text_config.max_position_embeddings)
        self._digest: str | None = None
        torch.manual_seed(self.seed)

    # -- per-generation details -----------------------------------------------------------------
    def _speakers(self) -> list[str]:
        raise NotImplementedError

    def _generate_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of this generation's `generate`."""
        return {}

    @staticmethod
    def _split_result(result: Any, want_audio: bool):
        """(thinker token ids [1, L], waveform tensor or None) from `generate`'s return value."""
        raise NotImplementedError

    # -- identity -------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        if self._digest is None:
            template = getattr(self.processor, "chat_template", None) or ""
            self._digest = hashlib.sha256(
                (checkpoint_digest(self.path) + hashlib.sha256(str(template).encode()).hexdigest()).encode()
            ).hexdigest()
        return f"{self.name}:{self._digest[:16]}:{args_digest(self.args)}:dtype={self.dtype}"

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "class": type(self.model).__name__,
            "processor": type(self.processor).__name__,
            "processor_note": self.processor_note,
            "checkpoint_digest": checkpoint_digest(self.path),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "speaker": self.speaker if self.use_talker else None,
            "speakers": self.speakers,
            "talker": self.use_talker if self.use_talker else self.talker_note,
            "talker_max_new_tokens": self.talker_max_new_tokens,
            "talker_do_sample": "model default" if self.talker_do_sample is None else self.talker_do_sample,
            "system_policy": self.system_policy,
            "seed": self.seed,
            "input_sample_rate": self.feature_extractor.sampling_rate,
            "output_sample_rate": OUTPUT_SAMPLE_RATE,
            "streaming": False,
            "first_audio": "the whole answer, when generate returns (transformers has no audio streaming)",
            "max_batch_size": self.max_batch_size,
            "text_scoring": f"model.thinker, lm-eval HFLM conventions, max_length {self.text_scorer.max_length}",
        }

    # -- prompt ---------------------------------------------------------------------------------
    def _system_text(self, request: Request, extra: dict[str, Any]) -> str | None:
        own, task = self.model_system_prompt, request.system
        if self.system_policy == "task":
            return task
        if self.system_policy == "model":
            if task:
                extra["system_not_sent"] = task
            return own
        return " ".join(s for s in (own, task) if s) or None

    def _user_content(self, text: str | None, audio: Audio | None, where: str, audios: list[np.ndarray],
                      extra: dict[str, Any]) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        if audio is not None:
            rate = int(self.feature_extractor.sampling_rate)
            wav = resample(audio, rate, where)
            limit = getattr(self.feature_extractor, "n_samples", None)
            if limit and wav.size > limit:
                extra["input_truncated_s"] = round((wav.size - limit) / rate, 3)
            audios.append(wav)
            content.append({"type": "audio", "audio": f"<audio {len(audios)}>"})
        if text is not None and text.strip():
            content.append({"type": "text", "text": text})
        if not content:
            raise UnsupportedRequest(f"{where}: neither text nor audio")
        return content

    def build_inputs(self, request: Request, extra: dict[str, Any]) -> tuple[str, Any]:
        """(the rendered prompt, the processor's tensors) for one request."""
        audios: list[np.ndarray] = []
        if request.raw_prompt:
            if request.audio is not None or request.history or request.system:
                raise UnsupportedRequest(f"request {request.id}: a raw prompt is text alone, with no audio, "
                                         "history or system text")
            if not request.text:
                raise UnsupportedRequest(f"request {request.id}: empty raw prompt")
            return request.text, self.tokenizer(request.text, return_tensors="pt")
        messages: list[dict[str, Any]] = []
        system = self._system_text(request, extra)
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        for i, turn in enumerate(request.history):
            where = f"request {request.id} history[{i}]"
            if turn.role == "system":
                raise UnsupportedRequest(f"{where}: put the system text in Request.system")
            if turn.role == "assistant":
                if turn.text is None:
                    raise UnsupportedRequest(f"{where}: assistant turns are replayed as text; this one has none")
                messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.text}]})
            else:
                messages.append({"role": "user",
                                 "content": self._user_content(turn.text, turn.audio, where, audios, extra)})
        messages.append({"role": "user", "content": self._user_content(request.text, request.audio,
                                                                       f"request {request.id}", audios, extra)})
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if isinstance(prompt, list):
            prompt = prompt[0]
        inputs = self.processor(text=prompt, audio=audios or None, return_tensors="pt", padding=True,
                                sampling_rate=self.feature_extractor.sampling_rate)
        return prompt, inputs

    # -- generation -----------------------------------------------------------------------------
    def _run(self, request: Request) -> tuple[str, Audio | None, dict[str, float], dict[str, Any], str, dict]:
        """One request through `generate`: (text, audio, marks, extra, prompt, token counts)."""
        import torch

        want_audio = request.output_modality in ("speech", "both")
        if request.output_modality not in ("text", "speech", "both"):
            raise UnsupportedRequest(f"request {request.id}: unknown output modality {request.output_modality!r}")
        if want_audio and not self.use_talker:
            raise UsageError(f"{self.name}: speech output needs the talker: {self.talker_note}")
        if want_audio and request.raw_prompt:
            raise UnsupportedRequest(f"request {request.id}: a raw prompt is answered in text only")
        opts = request.options
        if want_audio and opts.stop:
            raise UnsupportedRequest(f"request {request.id}: stop strings cannot cut the speech channel "
                                     f"(stop={list(opts.stop)})")
        extra: dict[str, Any] = {"streaming": False, "first_audio_is_whole_answer": want_audio}
        prompt, inputs = self.build_inputs(request, extra)
        inputs = inputs.to(self.device)
        for k, v in inputs.items():
            if torch.is_floating_point(v):
                inputs[k] = v.to(self.dtype)
        marks = {"inputs_ready": time.monotonic()}
        sample = opts.temperature > 0
        gen: dict[str, Any] = {"thinker_max_new_tokens": opts.max_new_tokens, "thinker_do_sample": sample,
                               "return_audio": want_audio, **self._generate_kwargs()}
        if sample:
            gen.update(thinker_temperature=opts.temperature, thinker_top_p=opts.top_p)
        if want_audio:
            gen.update(speaker=self.speaker, talker_max_new_tokens=self.talker_max_new_tokens)
            if self.talker_do_sample is not None:
                gen["talker_do_sample"] = self.talker_do_sample
        seed = opts.seed if opts.seed is not None else self.seed
        torch.manual_seed(seed)
        with torch.no_grad():
            result = self.model.generate(**inputs, **gen)
        ids, wav = self._split_result(result, want_audio)
        prompt_len = int(inputs["input_ids"].shape[1])
        new = ids[0, prompt_len:].tolist()
        eos = self._eos_ids()
        n_text = next((i for i, t in enumerate(new) if t in eos), len(new))
        extra["stop_reason"] = "eos" if n_text < len(new) else "max_new_tokens"
        text = self.tokenizer.decode(new[:n_text], skip_special_tokens=True).strip()
        cut = first_stop(text, opts.stop)
        if cut >= 0:
            text, extra["stop_reason"] = text[:cut].rstrip(), "stop_string"
        audio = None
        if want_audio:
            samples = np.zeros(0, np.float32) if wav is None else wav.detach().float().cpu().numpy().reshape(-1)
            audio = Audio(samples, OUTPUT_SAMPLE_RATE)
            extra.update(speaker=self.speaker, audio_seconds=round(audio.duration, 3))
        extra.update(seed=seed, sampled=sample, thinker_text=text)
        return text, audio, marks, extra, prompt, {"prompt": prompt_len, "text": n_text}

    def _eos_ids(self) -> set[int]:
        eos = self.model.thinker.generation_config.eos_token_id
        ids = {eos} if isinstance(eos, int) else set(eos or [])
        for tok in ("<|im_end|>", "<|endoftext|>"):
            i = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(i, int) and i != self.tokenizer.unk_token_id:
                ids.add(i)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """The whole answer when `generate` returns: mark `inputs_ready` (processor done), then
        text, audio and end (prompt, tokens and the extra facts), stamped at return. Not a
        streaming model: see the module doc."""
        text, audio, marks, extra, prompt, tokens = self._run(request)
        yield from nonstreaming_events(text if request.output_modality != "speech" else None, audio,
                                       time.monotonic(), marks, info={"prompt": prompt, "tokens": tokens, **extra})

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        out = []
        for r in requests:  # batch size 1: see the module doc
            resp = collect_stream(self.stream(r))
            if r.output_modality in ("text", "both"):
                resp.text = resp.text or ""
            if r.output_modality == "speech":
                resp.text = None
            if r.output_modality in ("speech", "both") and resp.audio is None:
                resp.audio = Audio(np.zeros(0, np.float32), OUTPUT_SAMPLE_RATE)
            out.append(resp)
        return out


class Qwen25Omni(_QwenOmni):
    """Qwen2.5-Omni (3B / 7B): `Qwen2_5OmniForConditionalGeneration` + `Qwen2_5OmniProcessor`.

    model_args: path (Qwen/Qwen2.5-Omni-7B), dtype (auto: bfloat16 on CUDA, float32 on CPU),
    device (auto), speaker (Chelsie; or Ethan), system (model | task | model+task; default
    model), talker (true; false loads no talker: text out only), talker_max_new_tokens (4096),
    talker_do_sample (the model's default, true), seed (0), loglikelihood_batch_size (8),
    max_length (scoring context; default the thinker's max_position_embeddings),
    attn_implementation (e.g. flash_attention_2), trust_remote_code (false).
    """

    name = "qwen2_5_omni"
    model_class_name = "Qwen2_5OmniForConditionalGeneration"
    processor_class_name = "Qwen2_5OmniProcessor"
    default_path = "Qwen/Qwen2.5-Omni-7B"
    default_speaker = "Chelsie"
    default_system_policy = "model"
    model_system_prompt = QWEN25_SYSTEM_PROMPT

    def _speakers(self) -> list[str]:
        return sorted(getattr(self.model, "speaker_map", {}) or {})

    def _generate_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.use_talker:
            # the talker's own end tokens, from its config (transformers' default [8292, 8294] are these)
            t = self.model.config.talker_config
            kw["talker_eos_token_id"] = [t.tts_codec_pad_token_id, t.tts_codec_end_token_id]
        # `generate` checks the speaker even for text: any loaded speaker does there
        kw["speaker"] = self.speaker if self.speaker in self.speakers else next(iter(self.speakers), self.speaker)
        return kw

    @staticmethod
    def _split_result(result: Any, want_audio: bool):
        if want_audio:
            ids, wav = result
            return ids, wav
        return getattr(result, "sequences", result), None


class Qwen3Omni(_QwenOmni):
    """Qwen3-Omni (30B-A3B): `Qwen3OmniMoeForConditionalGeneration` + `Qwen3OmniMoeProcessor`.

    model_args as `qwen2_5_omni`, with path (Qwen/Qwen3-Omni-30B-A3B-Instruct), speaker
    (Ethan; the names in the checkpoint's `talker_config.speaker_id`: Ethan, Chelsie, Aiden)
    and system (default task: Qwen3-Omni needs no fixed system prompt).
    """

    name = "qwen3_omni"
    model_class_name = "Qwen3OmniMoeForConditionalGeneration"
    processor_class_name = "Qwen3OmniMoeProcessor"
    default_path = "Qwen/Qwen3-Omni-30B-A3B-Instruct"
    default_speaker = "Ethan"
    default_system_policy = "task"
    model_system_prompt = None

    def _speakers(self) -> list[str]:
        ids = getattr(self.model.config.talker_config, "speaker_id", None) or {}
        return sorted(ids)

    def _generate_kwargs(self) -> dict[str, Any]:
        # transformers' default thinker_eos_token_id is the real vocabulary's <|im_end|> (151645)
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        return {"thinker_eos_token_id": end if isinstance(end, int) else self.tokenizer.eos_token_id}

    @staticmethod
    def _split_result(result: Any, want_audio: bool):
        thinker, wav = result
        return getattr(thinker, "sequences", thinker), (wav if want_audio else None)
