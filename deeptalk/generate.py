"""Streaming generation: one decoding loop that emits text and delayed codec tokens.

The protocol (the paper's, Mini-Omni style parallel heads). A spoken answer follows the
prompt's `<|speech_start|>` token. Every decoding step s emits one text token and one
token per codebook; codebook i runs i + 1 steps behind (deeptalk/delay.py), so the text
runs ahead of the sound it describes:

    step         0     1     2    ...   n    n+1  ...   T+Q
    text         a_0   a_1   a_2  ... <text_end> <text_pad> ...
    codebook 0   pad   c0_0  c0_1 ...                 eos at step T+1
    codebook 1   pad   pad   c1_0 ...                 eos at step T+2
    ...

The input of step s+1 is step s's text token plus its Q audio tokens (embeddings summed).
Frame f is complete after step f + Q; the stream decodes frames as soon as
`first_chunk_frames` (then `chunk_frames`) new ones exist. Generation stops when the text
channel has ended and every codebook has emitted its EOS, or after `max_speech_steps`.

Text-only answers are plain autoregressive decoding of the text channel.

    gen = SpeechGenerator(model, tokenizer, encoder=speech_encoder, codec=codec)
    prompt = gen.prompt(audio=wav, sample_rate=sr, speak=True)
    for ev in gen.stream(prompt, output="speech"): ...        # GenEvent(kind, t, ...)
    result = gen.generate(prompt, output="speech")              # tokens, codes, audio, timings

Events are this package's own `GenEvent` (the harness adapter converts them).
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from deeptalk.kv_rows import drop_columns, keep_rows, write_rows
from deeptalk.sequence import (
    TEXT_MODALITY,
    build_prompt_ids,
    speak_token_modality,
    spoken_answer_modality,
    word_start_ids,
)
from deeptalk_common.content_memo import ContentMemo

Output = Literal["text", "speech", "both"]
# continuous batching: cache columns beyond the first batch's prompts and step budget; columns
# no live row sees are dropped once half of these are
_SPARE_COLUMNS = 64


@dataclass
class StreamConfig:
    """Decoding settings; every field is recorded with results."""

    max_new_tokens: int = 128  # text-only answers
    max_speech_steps: int = 400  # spoken answers: steps of the joint text + audio loop
    temperature: float = 0.0  # 0 = greedy (text and audio)
    top_p: float = 1.0
    seed: int | None = None
    first_chunk_frames: int = 2  # small first chunk: first audio early
    chunk_frames: int = 10  # later chunks: fewer codec calls
    decoder_left_context: int = 8  # frames of context re-decoded before each chunk
    decoder_lookahead: int = 1  # frames held back until their right context exists
    # a codec that speaks whole words (phone units): phonemes that wait before the first chunk is
    # rendered, and before each later one (None: the codec's own). Latency against intelligibility
    # (benchmarks/results/phones_streaming.json)
    decoder_min_first: int | None = None
    decoder_min_chunk: int | None = None
    batch_parallel: bool = False  # the paper's trick: a text-only stream supplies the text tokens
    # the same idea for any layout and batch: the text path answers first (the prompt without
    # <|speech_start|>, text modality only), and the spoken answer writes those tokens in its own
    # time (the words layout still holds each word for its audio) and speaks them
    lead_text: bool = False
    # KV cache: "static" (preallocated, fixed shapes; faster per step here, see the benchmark)
    # or "dynamic" (grows; needed by batch_parallel)
    cache: str = "static"
    # torch threads for the one-token decode steps (None: leave as is). Prefill is a matrix
    # product that uses every thread; a decode step is hundreds of tiny ops for which OpenMP's
    # fork/join costs more than it saves (measured: benchmarks/latency_deeptalk.py)
    decode_threads: int | None = None
    # decode audio chunks after the first on a worker thread, beside the next decode steps
    # (the first chunk is decoded in line: it is the time to first audio). Same audio, same
    # chunks; the codec's time leaves the generation loop (benchmarks/latency_deeptalk.py).
    background_decode: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenEvent:
    """A timed piece of output. kind: "text" (delta), "audio" (samples), "mark" (named point), "end"."""

    kind: str
    t: float  # time.monotonic()
    text: str | None = None
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    name: str | None = None
    info: dict | None = None


@dataclass
class Prompt:
    """Model inputs of one request, built by `SpeechGenerator.prompt`."""

    input_ids: torch.Tensor  # [1, L]
    token_modality: torch.Tensor  # [1, L]
    speech_embeds: torch.Tensor | None  # [1, P, H] for the <|audio_in|> placeholders
    rendered: str  # the template as text (speech frames shown as <|audio_in|>xP)
    speak: bool  # ends with <|speech_start|>
    t_start: float  # monotonic time when the input was handed over
    t_encoder: float | None = None  # monotonic time when the speech encoder finished
    audio_flags: dict = field(default_factory=dict)


@dataclass
class GenerationResult:
    text: str
    text_ids: list[int]
    codes: np.ndarray | None  # [Q, T] codec codes of the spoken answer
    audio: np.ndarray | None
    sample_rate: int | None
    stop_reason: str
    steps: int
    timings: dict[str, float]


class SpeechGenerator:
    """Prompt building and the decoding loop over a `DeepTalkForCausalLM`."""

    def __init__(self, model, tokenizer, encoder=None, codec=None):
        self.model, self.tokenizer, self.encoder, self.codec = model.eval(), tokenizer, encoder, codec
        cfg = model.config
        self.cfg = cfg
        self.special = {t: cfg.special_token_id(t) for t in cfg.special_tokens}
        self.stop_ids = {i for i in (tokenizer.eos_token_id, cfg.eos_token_id) if i is not None}
        self.stop_ids.add(self.special.get("<|text_end|>", -1))
        q = cfg.num_codebooks
        self.words_layout = getattr(cfg, "answer_layout", "block") == "words"
        self.word_starts = word_start_ids(tokenizer) if self.words_layout else frozenset()
        if self.words_layout and codec is not None and codec.word_end_code is None:
            raise ValueError(f"this model speaks in the 'words' layout: its codec needs a word-end code; "
                             f"{codec.name} has none")
        if q:
            if codec is not None and (codec.num_codebooks != q or codec.codebook_size != cfg.codebook_size):
                raise ValueError(f"codec {codec.num_codebooks}x{codec.codebook_size} does not match the model's "
                                 f"speech heads {q}x{cfg.codebook_size}")
            # audio heads may emit codec codes; codebook 0 may also end the answer (eos)
            bias = torch.full((q, cfg.audio_vocab_size), float("-inf"))
            bias[:, : cfg.codebook_size] = 0.0
            bias[0, cfg.audio_eos_id] = 0.0
            if self.words_layout:   # the audio's pad ends a word (sequence.word_aligned_steps)
                bias[:, cfg.audio_pad_id] = 0.0
            self._audio_bias = bias
        # the text channel never emits the speech-protocol tokens except <|text_end|>
        self._text_bias = torch.zeros(cfg.vocab_size)
        for name, i in self.special.items():
            if name != "<|text_end|>":
                self._text_bias[i] = float("-inf")

    # -- prompts ------------------------------------------------------------------
    def prompt(self, text: str | None = None, audio: np.ndarray | None = None, sample_rate: int | None = None,
               system: str | None = None, history: Sequence[tuple[str, str]] = (), speak: bool = False,
               name: str = "audio", t_start: float | None = None, raw: bool = False,
               memo: ContentMemo | None = None) -> Prompt:
        """Chat-template the request; a spoken turn becomes <|audio_in|> x P + <|audio_in_end|>.

        `raw`: `text` is a complete prompt (an lm-eval few-shot context), tokenised as the base
        LLM's own scoring does (special tokens added, no template); text only.

        `history` is (role, text) pairs. With both `text` and `audio`, the text follows the audio.
        `memo`: audio heard before is not heard again (batch evaluation; never for latency).
        """
        t0 = time.monotonic() if t_start is None else t_start
        if text is None and audio is None:
            raise ValueError("a prompt needs text or audio")
        if raw:
            if audio is not None or system or history or text is None:
                raise ValueError("a raw prompt is one complete text: no audio, system prompt or history")
            ids = self.tokenizer(text)["input_ids"] + ([self.cfg.special_token_id("<|speech_start|>")] if speak else [])
            dev = self.model.device
            modality = [TEXT_MODALITY] * (len(ids) - speak) + ([speak_token_modality(self.cfg)] if speak else [])
            return Prompt(input_ids=torch.tensor([ids], device=dev),
                          token_modality=torch.tensor([modality], device=dev), speech_embeds=None,
                          rendered=text + ("<|speech_start|>" if speak else ""), speak=speak, t_start=t0)
        speech, flags, t_enc = None, {}, None
        if audio is not None:
            if self.encoder is None:
                raise ValueError("this generator has no speech encoder: cannot take audio input")
            key = None if memo is None else memo.key(audio, sample_rate)
            kept = None if key is None else memo.get(key)
            if kept is None:
                with torch.no_grad():
                    speech, prepared, heard = self.encoder.encode_heard(audio, sample_rate, name=name)
                flags = {"clipped": prepared.clipped, "silent": prepared.silent, "truncated": prepared.truncated,
                         "speech_positions": int(speech.shape[0])}
                if heard is not None:  # what a CTC projector heard, for the sample log
                    flags["heard"] = self.decode_text(heard)
                if key is not None:
                    memo.put(key, (speech, flags))
            else:
                speech, flags = kept
            flags = dict(flags)
            t_enc = time.monotonic()
        p = int(speech.shape[0]) if speech is not None else None
        ids, modality, rendered = build_prompt_ids(self.tokenizer, self.cfg, text, p, speak, system, history,
                                                   speech_as_text=self.encoder is not None and self.encoder.reads_as_text)
        dev = self.model.device
        return Prompt(
            input_ids=torch.tensor([ids], device=dev),
            token_modality=torch.tensor([modality], device=dev),
            speech_embeds=None if speech is None else speech.unsqueeze(0).to(dev, self.model.dtype),
            rendered=rendered, speak=speak, t_start=t0, t_encoder=t_enc, audio_flags=flags,
        )

    def decode_text(self, ids: Sequence[int]) -> str:
        base = self.cfg.base_vocab_size
        return self.tokenizer.decode([i for i in ids if i < base], skip_special_tokens=True)

    # -- sampling -----------------------------------------------------------------
    @staticmethod
    def _pick(logits: torch.Tensor, cfg: StreamConfig, gen: torch.Generator | None) -> torch.Tensor:
        """logits [..., V] -> ids [...]: argmax, or seeded temperature / top-p sampling."""
        if cfg.temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / cfg.temperature, -1)
        if cfg.top_p < 1.0:
            sorted_p, idx = probs.sort(-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p * keep)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=gen).reshape(probs.shape[:-1])

    # -- the decoding loop ---------------------------------------------------------
    def steps(self, prompt: Prompt, output: Output, cfg: StreamConfig) -> Iterator[tuple]:
        """Yield ("prefill", None), then per step (text_id, audio_column [Q] | None), then ("stop", reason)."""
        for _, tok, column in self._decode([prompt], output, cfg):
            yield tok, column

    @torch.no_grad()
    def _decode(self, prompts: Sequence[Prompt], output: Output, cfg: StreamConfig,
                rows: int | None = None) -> Iterator[tuple]:
        """The one decoding loop, for one prompt or a left-padded batch (one model step for all rows).

        Yields (r, "prefill", None) once prompt r's prefill is done; then at each step
        (r, text_id, audio_column [Q] | None) for every prompt r still answering, followed by
        (r, "stop", reason) where r ended: "eos", or "max_steps" | "max_new_tokens" after the
        step budget.

        A row that has ended leaves the batch (its cache rows with it): a batch runs until its
        longest answer ends, and most of its rows end long before. `rows` (continuous batching):
        at most this many prompts decode together; the others wait, in order, and each takes
        the place of a row that ended: its prompt is prefilled and written into that cache row
        (deeptalk/kv_rows.py), so the steps stay full. A step's cost is mostly reading the
        weights: one of 16 rows costs about twice one of a single row on a CPU core."""
        speak = output in ("speech", "both")
        if speak and not all(p.speak for p in prompts):
            raise ValueError("a spoken answer needs a prompt built with speak=True")
        if speak and not self.cfg.num_codebooks:
            raise ValueError("this model has no speech heads (num_codebooks=0): cannot answer in speech")
        parallel = speak and cfg.batch_parallel
        if parallel and cfg.cache != "dynamic":
            raise ValueError("batch_parallel decoding needs cache='dynamic'")
        if parallel and len(prompts) != 1:
            raise ValueError("batch_parallel decoding answers one prompt at a time")
        if parallel and self.words_layout:
            raise ValueError("batch_parallel decoding follows a text-only answer; the 'words' layout holds the text")
        if rows is not None and rows < 1:
            raise ValueError(f"rows={rows}: at least one prompt decodes at a time")
        lead = speak and cfg.lead_text
        if lead and parallel:
            raise ValueError("lead_text and batch_parallel both let the text path write the answer: choose one")
        led = self._text_path_answers(prompts, cfg, rows) if lead else None
        taken = [0] * len(prompts)  # tokens of the text path's answer written so far, per prompt
        gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None and cfg.temperature > 0 else None
        model, dev, n, q = self.model, self.model.device, len(prompts), self.cfg.num_codebooks
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        budget = cfg.max_speech_steps if speak else cfg.max_new_tokens
        waiting = deque(range(n))
        continuous = rows is not None and rows < n
        active = [waiting.popleft() for _ in range(rows if continuous else n)]  # prompt of each cache row
        # every prompt must fit before the column where it joins: the first batch is padded to the longest
        width = max(p.input_ids.shape[1] for p in prompts) if continuous else None
        ids, modality, speech, mask, positions = self._prefill_inputs([prompts[r] for r in active], parallel, pad,
                                                                      width)
        past = self._new_cache(cfg, ids.shape[1] + (_SPARE_COLUMNS if continuous else 0), speak)
        out = model(input_ids=ids, speech_embeds=speech, token_modality=modality, attention_mask=mask,
                    position_ids=positions, past_key_values=past, use_cache=True, logits_to_keep=1,
                    return_audio_logits=speak)
        past, column = out.past_key_values, ids.shape[1]  # the cache column the next step writes
        positions = None if positions is None else positions[:, -1:]
        text_logits, audio_logits = out.logits[:, -1], out.audio_logits[:, -1] if speak else None
        for r in active:
            yield r, "prefill", None
        text_bias = self._text_bias.to(dev)
        audio_bias = self._audio_bias.to(dev) if speak else None
        answers = [_SpokenAnswer(self) for _ in range(n)] if speak else None
        done, steps = [False] * n, [0] * n
        # batch-parallel: the text-only companion row (last) supplies the text token
        text_row = (lambda j: len(active)) if parallel else (lambda j: j)
        answer_modality = spoken_answer_modality(self.model.config) if speak else TEXT_MODALITY
        step_modality = torch.tensor([[answer_modality]] * len(active) + ([[TEXT_MODALITY]] if parallel else []),
                                     device=dev)
        threads = torch.get_num_threads()
        if cfg.decode_threads:
            torch.set_num_threads(cfg.decode_threads)
        try:
            while True:
                tokens, columns = [], []
                for j, r in enumerate(active):
                    s = steps[r]
                    if speak:
                        # once the text has ended nothing is drawn for it (a seeded sampler's stream stays the same)
                        if answers[r].text_done:
                            raw = None
                        elif led is not None:  # the text path's next token, offered until it is written
                            raw = led[r][taken[r]] if taken[r] < len(led[r]) else self.tokenizer.eos_token_id
                        else:
                            raw = int(self._pick(text_logits[text_row(j)] + text_bias, cfg, gen))
                        column_codes = self._pick(audio_logits[j] + audio_bias, cfg, gen)  # [Q]
                        tok, column_codes, finished = answers[r].step(s, raw, column_codes, audio_logits[j])
                        if led is not None and raw is not None and tok == raw:
                            taken[r] += 1
                    else:
                        tok, column_codes = int(self._pick(text_logits[j] + text_bias, cfg, gen)), None
                        finished = tok in self.stop_ids
                    yield r, tok, column_codes
                    steps[r] += 1
                    if finished:
                        done[r] = True
                        yield r, "stop", "eos"
                    elif steps[r] >= budget:
                        done[r] = True
                        yield r, "stop", "max_steps" if speak else "max_new_tokens"
                    tokens.append(tok)
                    columns.append(column_codes)
                if all(done[r] for r in active) and not waiting:
                    return
                ended = [j for j, r in enumerate(active) if done[r]]
                refill = ended[:len(waiting)]   # rows that take a waiting prompt after this step
                keep = [j for j in range(len(active)) if j not in ended[len(refill):]]
                if len(keep) < len(active):  # parallel decoding has one row: it never gets here
                    kept = torch.tensor(keep, device=dev)
                    keep_rows(past, kept)
                    refill = [keep.index(j) for j in refill]
                    active = [active[j] for j in keep]
                    tokens, columns = [tokens[j] for j in keep], [columns[j] for j in keep]
                    step_modality = step_modality.index_select(0, kept)
                    mask = None if mask is None else mask.index_select(0, kept)
                    positions = None if positions is None else positions.index_select(0, kept)
                if continuous:
                    # columns before every live row's first one are seen by no one: drop them
                    # (keeping room before the current column for the longest waiting prompt)
                    first = min(int(mask.argmax(1).min()), column - width)
                    if first >= _SPARE_COLUMNS // 2:
                        drop_columns(past, first, column)
                        mask, column = mask[:, first:], column - first
                if parallel:  # the companion reads the same text token and no audio
                    tokens.append(tokens[0])
                    columns.append(torch.full_like(columns[0], -1))
                if mask is not None:
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                if positions is not None:
                    positions = positions + 1
                out = model(input_ids=torch.tensor(tokens, device=dev).view(-1, 1),
                            audio_codes=torch.stack(columns).view(-1, q, 1) if speak else None,
                            attention_mask=mask, position_ids=positions, past_key_values=past,
                            cache_position=torch.tensor([column], device=dev),
                            token_modality=step_modality, use_cache=True, return_audio_logits=speak)
                past, column = out.past_key_values, column + 1
                text_logits, audio_logits = out.logits[:, -1], out.audio_logits[:, -1] if speak else None
                if refill:
                    joined = [waiting.popleft() for _ in refill]
                    mask, positions, text_logits, audio_logits = self._join(
                        [prompts[r] for r in joined], torch.tensor(refill, device=dev), past, column, mask,
                        positions, text_logits, audio_logits, speak, pad)
                    for j, r in zip(refill, joined):
                        active[j] = r
                        yield r, "prefill", None
        finally:
            torch.set_num_threads(threads)

    def _join(self, prompts: Sequence[Prompt], rows: torch.Tensor, past, column: int, mask, positions,
              text_logits, audio_logits, speak: bool, pad: int):
        """Prefill `prompts` together and write them into cache `rows`, ending at `column`: their
        masks, positions and first logits replace those rows' (the updated tensors are returned)."""
        ids, modality, speech, join_mask, join_positions = self._prefill_inputs(prompts, False, pad,
                                                                                max(p.input_ids.shape[1] for p in prompts))
        out = self.model(input_ids=ids, speech_embeds=speech, token_modality=modality, attention_mask=join_mask,
                         position_ids=join_positions, use_cache=True, logits_to_keep=1, return_audio_logits=speak)
        write_rows(past, rows, out.past_key_values, column)
        mask, positions, text_logits = mask.clone(), positions.clone(), text_logits.clone()
        mask[rows] = 0
        mask[rows, column - ids.shape[1]:column] = join_mask
        positions[rows] = join_positions[:, -1:]
        text_logits[rows] = out.logits[:, -1]
        if speak:
            audio_logits = audio_logits.clone()
            audio_logits[rows] = out.audio_logits[:, -1]
        return mask, positions, text_logits, audio_logits

    def _text_path_answers(self, prompts: Sequence[Prompt], cfg: StreamConfig,
                           rows: int | None = None) -> list[list[int]]:
        """lead_text: each spoken prompt's answer on the text path (the prompt without its final
        <|speech_start|>, greedy or as cfg samples), its stop token included where it stopped."""
        from dataclasses import replace

        start = self.cfg.special_token_id("<|speech_start|>")
        if any(int(p.input_ids[0, -1]) != start for p in prompts):
            raise ValueError("lead_text: a spoken prompt ends with <|speech_start|>")
        texts = [replace(p, input_ids=p.input_ids[:, :-1], token_modality=p.token_modality[:, :-1], speak=False)
                 for p in prompts]
        written: list[list[int]] = [[] for _ in prompts]
        for r, tok, _ in self._decode(texts, "text", replace(cfg, lead_text=False), rows):
            if tok not in ("prefill", "stop"):
                written[r].append(int(tok))
        return written

    def _prefill_inputs(self, prompts: Sequence[Prompt], parallel: bool, pad: int, width: int | None = None):
        """(input_ids, token_modality, speech_embeds, attention_mask, position_ids) of the prefill.

        One prompt goes in as it is (no mask, default positions). Several are left-padded, so
        every row's next token lands in the same column; to `width` columns where given (with
        a mask and positions even for one prompt). Batch-parallel decoding (the paper's
        trick) adds a text-only companion row: the same request without <|speech_start|>,
        left-padded by one; its text token is fed to both rows, so the spoken answer follows
        the text-only one."""
        if parallel:
            p = prompts[0]
            ids, mod = p.input_ids, p.token_modality
            pad_col = torch.full_like(ids[:, :1], self.tokenizer.pad_token_id or 0)
            mask = torch.ones(2, ids.shape[1], dtype=torch.long, device=ids.device)
            mask[1, 0] = 0
            return (torch.cat([ids, torch.cat([pad_col, ids[:, :-1]], 1)]),
                    torch.cat([mod, torch.cat([torch.zeros_like(pad_col), mod[:, :-1]], 1)]),
                    None if p.speech_embeds is None else p.speech_embeds.repeat(2, 1, 1), mask, None)
        if len(prompts) == 1 and width is None:
            p = prompts[0]
            return p.input_ids, p.token_modality, p.speech_embeds, None, None
        dev, b = self.model.device, len(prompts)
        width = max([p.input_ids.shape[1] for p in prompts] + [width or 0])
        ids = torch.full((b, width), pad, dtype=torch.long, device=dev)
        modality = torch.zeros((b, width), dtype=torch.long, device=dev)
        mask = torch.zeros((b, width), dtype=torch.long, device=dev)
        for r, p in enumerate(prompts):
            w = p.input_ids.shape[1]
            ids[r, width - w:], modality[r, width - w:], mask[r, width - w:] = p.input_ids[0], p.token_modality[0], 1
        speech = [p.speech_embeds[0] for p in prompts if p.speech_embeds is not None]
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        return ids, modality, torch.cat(speech) if speech else None, mask, positions

    def _new_cache(self, cfg: StreamConfig, prompt_len: int, speak: bool):
        """A static KV cache sized for the prompt and the step budget, or None (dynamic)."""
        if cfg.cache == "dynamic":
            return None
        if cfg.cache != "static":
            raise ValueError(f"StreamConfig.cache={cfg.cache!r}: expected 'dynamic' or 'static'")
        from transformers import StaticCache

        budget = cfg.max_speech_steps if speak else cfg.max_new_tokens
        return StaticCache(config=self.model.config, max_cache_len=prompt_len + budget + 1)

    def _shown(self, tok: int, speak: bool) -> bool:
        """Whether a text-channel token is part of the answer's text (not a stop or, when speaking, a pad)."""
        return tok not in self.stop_ids and not (speak and tok == self.special.get("<|text_pad|>"))

    # -- streaming -----------------------------------------------------------------
    def stream(self, prompt: Prompt, output: Output = "text", cfg: StreamConfig | None = None) -> Iterator[GenEvent]:
        """Timed events: marks (encoder_done, prefill_done, first_chunk_ready, first_chunk_decoded), text deltas,
        audio chunks, then "end" with the stop reason, token counts and codes in `info`."""
        cfg = cfg or StreamConfig()
        speak = output in ("speech", "both")
        if speak and self.codec is None:
            raise ValueError("a spoken answer needs a codec")
        if cfg.first_chunk_frames < 1 or cfg.chunk_frames < 1:
            raise ValueError("first_chunk_frames and chunk_frames must be >= 1")
        now = time.monotonic
        if prompt.t_encoder is not None:
            yield GenEvent("mark", prompt.t_encoder, name="encoder_done")
        q = self.cfg.num_codebooks
        shown = _TextDeltas(self)  # holds the answer's text ids
        frames: list[np.ndarray] = []  # complete frames [Q] not yet pushed to the decoder
        grid: list[np.ndarray] = []
        decoder = self.stream_decoder(cfg) if speak else None
        sr = self.codec.sample_rate if speak else None
        # one worker keeps the chunks in order: the decoder is stateful
        pool = ThreadPoolExecutor(1, thread_name_prefix="codec") if speak and cfg.background_decode else None
        pending: deque = deque()

        def ready(block: bool = False) -> Iterator[GenEvent]:
            while pending and (block or pending[0].done()):
                wav = pending.popleft().result()
                if len(wav):   # timed when handed over: what the listener gets
                    yield GenEvent("audio", now(), audio=wav, sample_rate=sr)

        def push(chunk: list[np.ndarray], first: bool):
            """Yields the chunk's events; returns whether the first audio is out (until then chunks
            decode in line: a codec that speaks whole words says nothing before a word ends)."""
            if first or pool is None:
                return (yield from self._push(decoder, chunk, sr, first)) or not first
            pending.append(pool.submit(decoder.push, np.stack(chunk, 1).astype(np.int64)))
            return True

        def finish_audio() -> Iterator[GenEvent]:
            nonlocal frames, first_chunk
            if frames:
                first_chunk = not (yield from push(frames, first_chunk))
                frames = []
            yield from ready(block=True)
            t_ready = now()
            tail = decoder.flush() if decoder.frames else np.zeros(0, np.float32)
            if len(tail):
                if first_chunk:   # the whole answer was shorter than a first chunk
                    yield from self._first_marks(t_ready, now(), decoder.frames)
                yield GenEvent("audio", now(), audio=tail, sample_rate=sr)

        try:
            flushed = False
            kept: list[np.ndarray] = []   # every frame the codec hears, for the codes in "end"
            first_chunk = True
            stop_reason = None
            n_steps = 0
            eos = self.cfg.audio_eos_id if speak else None
            audio_over = False
            for tok, column in self.steps(prompt, output, cfg):
                if tok == "prefill":
                    yield GenEvent("mark", now(), name="prefill_done")
                    continue
                if tok == "stop":
                    stop_reason = column
                    continue
                n_steps += 1
                if self._shown(tok, speak):
                    delta = shown.push(tok)
                    if delta:
                        yield GenEvent("text", now(), text=delta)
                if column is None:
                    continue
                col = column.cpu().numpy()
                grid.append(col)
                s = len(grid) - 1
                # frame s - Q is complete at step s, unless codebook 0 already ended the audio
                f = s - q
                if f >= 0 and not audio_over:
                    if grid[f + 1][0] == eos:
                        audio_over = True
                    else:
                        frame = self._heard(self._frame(grid, f, q), kept)
                        if frame is not None:
                            frames.append(frame)
                            kept.append(frame)
                want = cfg.first_chunk_frames if first_chunk else cfg.chunk_frames
                if len(frames) >= want:
                    first_chunk = not (yield from push(frames, first_chunk))
                    frames = []
                yield from ready()
                if audio_over and not flushed:
                    # the audio is complete: play all of it now, not when the text channel ends
                    yield from finish_audio()
                    flushed = True
            if speak and not flushed:
                yield from finish_audio()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        codes = (np.stack(kept, 1) if kept else np.zeros((q, 0), dtype=np.int64)) if speak else None
        yield GenEvent("end", now(), info={"stop_reason": stop_reason, "steps": n_steps, "text_ids": shown.ids,
                                           "codes": codes, "frames": len(kept)})

    @staticmethod
    def _frame(grid: list[np.ndarray], f: int, q: int) -> np.ndarray:
        return np.array([grid[f + 1 + i][i] for i in range(q)], dtype=np.int64)

    def _heard(self, frame: np.ndarray, kept: list[np.ndarray]) -> np.ndarray | None:
        """What the codec hears of a complete frame: codes as they are; the audio's pad (a wait)
        nothing, except in the "words" layout, where the first one after a word ends that word
        (the codec's word-end code: a space between phonemes)."""
        if not (frame == self.cfg.audio_pad_id).all():
            return frame
        if self.words_layout and kept and int(kept[-1][0]) != self.codec.word_end_code:
            return np.full_like(frame, self.codec.word_end_code)
        return None

    def _push(self, decoder, frames: list[np.ndarray], sr: int, first: bool):
        """Decode a chunk in line; returns whether it sounded. The first chunk that sounds is marked:
        its codes existed when it was pushed (first_chunk_ready), then the codec decoded it."""
        t_ready = time.monotonic()
        wav = decoder.push(np.stack(frames, 1).astype(np.int64))
        t = time.monotonic()
        if first and len(wav):
            yield from self._first_marks(t_ready, t, decoder.frames)
        if len(wav):
            yield GenEvent("audio", t, audio=wav, sample_rate=sr)
        return bool(len(wav))

    @staticmethod
    def _first_marks(t_ready: float, t_decoded: float, frames: int) -> Iterator[GenEvent]:
        yield GenEvent("mark", t_ready, name="first_chunk_ready", info={"frames": frames})
        yield GenEvent("mark", t_decoded, name="first_chunk_decoded", info={"frames": frames})

    # -- non-streaming ---------------------------------------------------------------
    def generate(self, prompt: Prompt, output: Output = "text", cfg: StreamConfig | None = None,
                 as_streamed: bool = False) -> GenerationResult:
        """The same loop without chunked decoding; a spoken answer is decoded once, whole
        (`as_streamed`: in the chunks `stream()` decodes, so the audio is the one it plays)."""
        cfg = cfg or StreamConfig()
        timings: dict[str, float] = {}
        if prompt.t_encoder is not None:
            timings["encoder"] = prompt.t_encoder - prompt.t_start
        [answer], [t_prefill], _ = self._answers([prompt], output, cfg)
        timings["prefill_done"] = t_prefill - prompt.t_start
        result = self._result(answer, output, cfg, as_streamed)
        timings["total"] = time.monotonic() - prompt.t_start
        result.timings = timings
        return result

    def generate_batch(self, prompts: Sequence[Prompt], output: Output = "text",
                       cfg: StreamConfig | None = None, rows: int | None = None) -> list[GenerationResult]:
        """Greedy answers to several prompts in one batch (left-padded, one decoding step for
        all rows), each as `stream()` would give it: the same tokens up to float summation
        order, audio decoded chunk by chunk as streamed. `rows`: at most this many decode at a
        time, the next prompt taking the place of each answer that ends (continuous batching).
        Sampling or batch-parallel decoding answers one prompt at a time (a shared sampler
        would draw differently).

        Timings per answer, from the call: its prefill done, its last step, and the call's end
        (every answer's audio decoded)."""
        cfg = cfg or StreamConfig()
        speak = output in ("speech", "both")
        if len(prompts) <= 1 or cfg.temperature > 0 or (speak and cfg.batch_parallel):
            return [self.generate(p, output, cfg, as_streamed=True) for p in prompts]
        t0 = time.monotonic()
        answers, t_prefill, t_answered = self._answers(prompts, output, cfg, rows)
        results = []
        for answer in answers:
            results.append(self._result(answer, output, cfg, as_streamed=True))
        t_end = time.monotonic()
        for result, t_p, t_a in zip(results, t_prefill, t_answered):
            result.timings = {"prefill_done": t_p - t0, "answered": t_a - t0, "total": t_end - t0,
                              "batch": float(len(prompts)), "rows": float(min(rows or len(prompts), len(prompts)))}
        return results

    def _answers(self, prompts: Sequence[Prompt], output: Output, cfg: StreamConfig,
                 rows: int | None = None) -> tuple[list[tuple], list[float], list[float]]:
        """Run the loop to the end: per prompt (text ids, emitted grid, stop reason); and per
        prompt when its prefill finished and when it ended."""
        speak = output in ("speech", "both")
        if speak and self.codec is None:
            raise ValueError("a spoken answer needs a codec")
        text_ids: list[list[int]] = [[] for _ in prompts]
        grids: list[list[np.ndarray]] = [[] for _ in prompts]
        stops: list[str | None] = [None] * len(prompts)
        t_prefill, t_answered = [0.0] * len(prompts), [0.0] * len(prompts)
        for r, tok, column in self._decode(prompts, output, cfg, rows):
            if tok == "prefill":
                t_prefill[r] = time.monotonic()
            elif tok == "stop":
                stops[r], t_answered[r] = column, time.monotonic()
            else:
                if column is not None:
                    grids[r].append(column.cpu().numpy())
                if self._shown(tok, speak):
                    text_ids[r].append(tok)
        return list(zip(text_ids, grids, stops)), t_prefill, t_answered

    def _result(self, answer: tuple, output: Output, cfg: StreamConfig, as_streamed: bool) -> GenerationResult:
        """A GenerationResult (without timings) from one row of `_answers`, its audio decoded."""
        text_ids, grid, stop_reason = answer
        speak = output in ("speech", "both")
        codes = audio = None
        if speak:
            codes = self._codes_of(grid)
            if as_streamed:
                audio = self.decode_as_streamed(codes, cfg)
            else:
                audio = self.codec.decode(codes) if codes.shape[1] else np.zeros(0, np.float32)
        return GenerationResult(self.decode_text(text_ids), text_ids, codes, audio,
                                self.codec.sample_rate if speak else None, stop_reason,
                                len(grid) if speak else len(text_ids), {})

    def text_deltas(self, text_ids: Sequence[int]) -> list[str]:
        """The text deltas `stream()` yields for these answer ids (empty where it yields none)."""
        deltas = _TextDeltas(self)
        return [deltas.push(t) for t in text_ids]

    def stream_decoder(self, cfg: StreamConfig):
        """The codec's streaming decoder under `cfg` (a word-chunking codec's chunk sizes only where set)."""
        words = {k: v for k, v in (("min_first", cfg.decoder_min_first), ("min_chunk", cfg.decoder_min_chunk))
                 if v is not None}
        return self.codec.stream_decoder(left_context=cfg.decoder_left_context, lookahead=cfg.decoder_lookahead,
                                         **words)

    def decode_as_streamed(self, codes: np.ndarray, cfg: StreamConfig) -> np.ndarray:
        """The waveform `stream()` plays for these codes: the same chunks through the same
        streaming decoder (a codec that re-estimates phase per chunk sounds slightly
        different decoded whole)."""
        decoder = self.stream_decoder(cfg)
        n = codes.shape[1]
        if not n:
            return np.zeros(0, np.float32)
        parts, start, sounded = [], 0, False
        while start < n:   # first_chunk_frames at a time until the first audio, then chunk_frames
            end = min(start + (cfg.chunk_frames if sounded else cfg.first_chunk_frames), n)
            parts.append(decoder.push(codes[:, start:end].astype(np.int64)))
            sounded, start = sounded or bool(len(parts[-1])), end
        parts.append(decoder.flush())
        return np.concatenate(parts).astype(np.float32)

    def _codes_of(self, grid: list[np.ndarray]) -> np.ndarray:
        """The complete frames [Q, T] of an emitted delay-pattern grid, up to codebook 0's EOS."""
        q, eos = self.cfg.num_codebooks, self.cfg.audio_eos_id
        eos_at = next((s for s in range(1, len(grid)) if grid[s][0] == eos), None)
        n = max(len(grid) - q, 0)
        if eos_at is not None:
            n = min(n, eos_at - 1)
        kept: list[np.ndarray] = []
        for f in range(n):
            frame = self._heard(self._frame(grid, f, q), kept)
            if frame is not None:
                kept.append(frame)
        return np.stack(kept, 1) if kept else np.zeros((q, 0), np.int64)


class _TextDeltas:
    """Text as `stream()` shows it: after each token, the newly decoded characters, held back
    while the decode ends in a partial character (U+FFFD). Joined, the deltas can differ from
    decoding all ids at once where the tokenizer's clean-up rewrites earlier text."""

    def __init__(self, gen: SpeechGenerator):
        self.gen, self.ids, self.shown = gen, [], 0

    def push(self, tok: int) -> str:
        self.ids.append(tok)
        text = self.gen.decode_text(self.ids)
        if len(text) > self.shown and not text.endswith("\ufffd"):
            delta, self.shown = text[self.shown:], len(text)
            return delta
        return ""


class _SpokenAnswer:
    """The protocol rules of one spoken answer, applied to the heads' picks at step s: the
    text channel ends at a stop token, then pads; the delay pattern is forced, not left to
    the heads (pad before each codebook starts, EOS exactly i steps after codebook 0's, pad
    after it); an answer has at least one frame; it is over when the text has ended and every
    codebook has emitted its EOS.

    In the "words" layout (sequence.word_aligned_steps) the text also holds: once a word's
    tokens are written, a token that starts the next word is held (the text channel pads, and
    pads whatever the head picks meanwhile) until the audio is free: it ends the current word
    (its pad) or has ended. Then the head's pick at that step is written. No word end follows
    the last word: once the text has ended, the audio's pick is its best code or its EOS."""

    def __init__(self, gen: SpeechGenerator):
        c = gen.cfg
        self.c, self.stop_ids = c, gen.stop_ids
        self.text_end, self.text_pad = gen.special["<|text_end|>"], gen.special["<|text_pad|>"]
        self.text_done = False
        self.eos_step: int | None = None  # step at which codebook 0 emitted EOS
        self.delays = torch.arange(1, c.num_codebooks + 1)
        self.word_starts = gen.word_starts if gen.words_layout else None
        self.wrote = False     # the words layout: a token has been written (the first word needs no wait)
        self.holding = False   # ... and the next word waits for the audio

    def step(self, s: int, text_id: int | None, column: torch.Tensor, audio_logits: torch.Tensor):
        """(text token, audio column [Q], finished) for step s; text_id is ignored once the text ended."""
        c, q = self.c, self.c.num_codebooks
        delays = self.delays.to(column.device)
        column = torch.where(s < delays, torch.full_like(column, c.audio_pad_id), column)
        if (self.word_starts is not None and self.text_done and self.eos_step is None and s >= 1
                and int(column[0]) == c.audio_pad_id):
            # the words layout: no word end follows the last word, so once the text has ended
            # the audio speaks on or ends the answer; a pad here would wait for nothing until the cap
            column[0] = self._code_or_end(audio_logits[0])
        if s < 2 and int(column[0]) == c.audio_eos_id:
            column[0] = int(audio_logits[0, : c.codebook_size].argmax())
        if self.eos_step is None and int(column[0]) == c.audio_eos_id:
            self.eos_step = s
        if self.eos_step is not None:
            offset = s - self.eos_step - torch.arange(q, device=column.device)
            column = torch.where(offset == 0, torch.full_like(column, c.audio_eos_id), column)
            column = torch.where(offset > 0, torch.full_like(column, c.audio_pad_id), column)
        if self.text_done:
            tok = self.text_pad
        else:
            tok = text_id
            if tok in self.stop_ids:
                tok, self.text_done = self.text_end, True
            elif self.word_starts is not None:
                audio_free = self.eos_step is not None or int(column[0]) == c.audio_pad_id
                if self.wrote and (self.holding or tok in self.word_starts) and not audio_free:
                    tok, self.holding = self.text_pad, True
                else:
                    self.wrote, self.holding = True, False
        finished = self.text_done and self.eos_step is not None and s >= self.eos_step + q - 1
        return tok, column, finished

    def _code_or_end(self, logits: torch.Tensor) -> int:
        """The best of codebook 0's codes and its EOS (logits [V_audio])."""
        allowed = torch.full_like(logits, float("-inf"))
        allowed[: self.c.codebook_size] = 0.0
        allowed[self.c.audio_eos_id] = 0.0
        return int((logits + allowed).argmax())
