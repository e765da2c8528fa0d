"""The token layout of one turn, shared by the trainer and the generator.

A request is the chat template with the spoken user turn as `<|audio_in|>` placeholders
(speech modality) and, when the model answers in speech, `<|speech_start|>` at the end.
A spoken answer is a text channel (tokens, `<|text_end|>`, then `<|text_pad|>`) beside the
codec codes in the delay pattern (deeptalk/delay.py). Training builds its sequences with
these functions and generation its prompts, so the two cannot drift apart.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# ANSWER: a step of a spoken answer routed to both expert groups (config.answer_routing "both")
TEXT_MODALITY, SPEECH_MODALITY, ANSWER_MODALITY = 0, 1, 2
_AUDIO_MARK = "\x00AUDIO\x00"  # stands in for the spoken user turn while the chat template renders


def build_prompt_ids(tokenizer, config, text: str | None, speech_positions: int | None, speak: bool,
                     system: str | None = None, history: Sequence[tuple[str, str]] = (),
                     speech_as_text: bool = False):
    """Token ids, token modality and readable text of a chat-templated request.

    A spoken user turn is `<|audio_in|>` x speech_positions + `<|audio_in_end|>` (speech
    modality) followed by `text` if any; `speak` appends `<|speech_start|>`. The trainer
    builds its sequences with this same function, so training and inference agree.
    `speech_as_text`: the positions are soft text embeddings (a CTC projector): text
    modality and no end marker, so the LLM reads the turn as it reads a written one; with
    `text`, the instruction comes first and the heard positions follow it in quotes.
    """
    if text is None and speech_positions is None:
        raise ValueError("a prompt needs text or audio")
    if speech_as_text and text and speech_positions is not None:
        # heard text with a written instruction: the instruction, then what was heard as a quoted
        # block, the way a user pastes text for the model to work on. Asked to transcribe, the
        # base LLM copies a quoted block (corpus WER 0.72 on held-out sentences heard perfectly)
        # and answers or continues unquoted heard text (1.35 after the instruction, 1.87 before);
        # docs/training.md "Transcribing through the text path"
        content = f'{text}\n\n"{_AUDIO_MARK}"'
    else:
        content = (_AUDIO_MARK if speech_positions is not None else "") + (text or "")
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": r, "content": c} for r, c in history] + [{"role": "user", "content": content}]
    rendered = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    def enc(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=False)["input_ids"]

    ids: list[int] = []
    modality: list[int] = []
    if speech_positions is not None:
        before, after = rendered.split(_AUDIO_MARK)
        ids += enc(before)
        modality += [TEXT_MODALITY] * len(ids)
        end = [] if speech_as_text else [config.special_token_id("<|audio_in_end|>")]
        ids += [config.special_token_id("<|audio_in|>")] * speech_positions + end
        modality += [TEXT_MODALITY if speech_as_text else SPEECH_MODALITY] * (speech_positions + len(end))
        ids += enc(after)
        rendered = before + f"<|audio_in|>x{speech_positions}" + ("" if speech_as_text else "<|audio_in_end|>") + after
    else:
        ids += enc(rendered)
    modality += [TEXT_MODALITY] * (len(ids) - len(modality))
    if speak:
        ids.append(config.special_token_id("<|speech_start|>"))
        modality.append(speak_token_modality(config))
        rendered += "<|speech_start|>"
    return ids, modality, rendered


def speak_token_modality(config) -> int:
    """The modality of `<|speech_start|>`: its logits pick the spoken answer's first text token.
    Under answer_routing "both" it is the answer's first step (text experts and the speech experts
    together): as a text position its output came from frozen parts alone in the stages that
    train the speech side, so the answer's first word could never be learnt (the base wrote ":"
    or "." there and the turn ended). Under "speech" it stays text: routing it to the speech
    experts alone would take the text experts from the step that reads the whole request."""
    return ANSWER_MODALITY if getattr(config, "answer_routing", "speech") == "both" else TEXT_MODALITY


def spoken_answer_modality(config) -> int:
    """The token modality of a spoken answer's steps (training and generation agree through this)."""
    return ANSWER_MODALITY if getattr(config, "answer_routing", "speech") == "both" else SPEECH_MODALITY


def answer_steps(text_ids: Sequence[int], codes: np.ndarray | torch.Tensor, config) -> tuple[list[int], torch.Tensor]:
    """The target steps of a spoken answer: (text channel [S], audio grid [Q, S]).

    Text: the answer's tokens, `<|text_end|>`, then `<|text_pad|>` while audio runs.
    Audio: `codes` [Q, T] in the delay pattern with pad / eos (deeptalk/delay.py).
    """
    from deeptalk.delay import build_delay_pattern

    codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)
    if codes.dim() != 2 or codes.shape[0] != config.num_codebooks:
        raise ValueError(f"answer codes must be [Q={config.num_codebooks}, T], got {tuple(codes.shape)}")
    grid = build_delay_pattern(codes, config.audio_pad_id, config.audio_eos_id)
    text = list(text_ids) + [config.special_token_id("<|text_end|>")]
    n = max(len(text), grid.shape[1])
    text += [config.special_token_id("<|text_pad|>")] * (n - len(text))
    if grid.shape[1] < n:
        pad = torch.full((grid.shape[0], n - grid.shape[1]), config.audio_pad_id, dtype=torch.long)
        grid = torch.cat([grid, pad], 1)
    return text, grid


# --- the "words" layout (config.answer_layout): each word's text just before its own units ---
def word_start_ids(tokenizer) -> frozenset[int]:
    """Ids of the tokens that begin a new word: their text starts with whitespace. A word is a
    token that begins one and the tokens after it that do not; training and generation split
    answers the same way through this."""
    cached = getattr(tokenizer, "_deeptalk_word_starts", None)
    if cached is None:
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        text = [tokenizer.convert_tokens_to_string([p]) if p is not None else "" for p in pieces]
        cached = frozenset(i for i, t in enumerate(text) if t[:1].isspace())
        tokenizer._deeptalk_word_starts = cached
    return cached


def split_words(text_ids: Sequence[int], starts: frozenset[int]) -> list[list[int]]:
    """The answer's tokens grouped into words (a new word at each token in `starts`)."""
    words: list[list[int]] = []
    for t in text_ids:
        if not words or t in starts:
            words.append([])
        words[-1].append(int(t))
    return words


def word_segments(text_ids: Sequence[int], tokenizer, codec) -> list[tuple[list[int], np.ndarray]]:
    """(the word's tokens, its codes [Q, m]) for each word of an answer, from the codec's reading of
    the word alone. A word the codec cannot speak (a lone dash) has no codes."""
    if codec.word_end_code is None:
        raise ValueError(f"the 'words' answer layout needs a codec with a word-end code (phones); {codec.name} has none")
    out = []
    for ids in split_words(text_ids, word_start_ids(tokenizer)):
        codes = codec.encode_text(tokenizer.decode(ids).strip())
        if codes is None:
            raise ValueError(f"the 'words' answer layout needs a codec that reads text (phones); {codec.name} does not")
        codes = np.asarray(codes, np.int64)
        while codes.shape[1] and codes[0, -1] == codec.word_end_code:   # espeak ends a clause with a space
            codes = codes[:, :-1]
        out.append((ids, codes))
    return out


def word_aligned_steps(segments: Sequence[tuple[Sequence[int], np.ndarray]], config
                       ) -> tuple[list[int], torch.Tensor, dict[int, int]]:
    """The target steps of a spoken answer in the "words" layout: (text channel [S], audio grid [Q, S],
    the text head's target at each step where a word's text is complete but held).

    Word i starts at the first step both channels are free: its tokens from there on the text
    channel, its codes from the same step (the delay pattern puts code f one step after the
    text beside it, so a word's first code sees its first token). After a word's codes the
    audio emits its pad once, which ends the word (the generator hears it as the codec's word
    end, a space between phonemes) and again while a word's text is longer than its codes. The
    text holds (`<|text_pad|>`) until the audio ends the word. The step right after a word's
    last token is taught the next word's first token: the generator holds that token there
    and writes it at the step the audio ends the word (generate._SpokenAnswer), so the text
    head learns when a word is complete and what comes next; the other held steps teach nothing."""
    from deeptalk.delay import build_delay_pattern

    q, wait = config.num_codebooks, config.audio_pad_id
    pad = config.special_token_id("<|text_pad|>")
    text: list[int] = []
    frames: list[np.ndarray] = []
    decide: dict[int, int] = {}
    for k, (ids, codes) in enumerate(segments):
        if k:
            frames.append(np.full(q, wait, np.int64))   # the previous word is over
        start = max(len(text), len(frames))
        if text and start > len(text):
            decide[len(text)] = int(ids[0])
        text += [pad] * (start - len(text)) + [int(t) for t in ids]
        frames += [np.full(q, wait, np.int64)] * (start - len(frames)) + list(np.asarray(codes, np.int64).reshape(q, -1).T)
    text.append(config.special_token_id("<|text_end|>"))
    codes = torch.as_tensor(np.stack(frames, 1) if frames else np.zeros((q, 0), np.int64))
    grid = build_delay_pattern(codes, config.audio_pad_id, config.audio_eos_id)
    n = max(len(text), grid.shape[1])
    text += [pad] * (n - len(text))
    if grid.shape[1] < n:
        grid = torch.cat([grid, torch.full((q, n - grid.shape[1]), config.audio_pad_id, dtype=torch.long)], 1)
    return text, grid, decide
