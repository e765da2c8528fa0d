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
    modality and no end marker, so the LLM reads the turn as it reads a written one.
    """
    if text is None and speech_positions is None:
        raise ValueError("a prompt needs text or audio")
    # heard text and a written instruction after it are two lines, as a user would type them
    sep = "\n" if speech_as_text and text else ""
    content = (_AUDIO_MARK + sep if speech_positions is not None else "") + (text or "")
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
    if speak:
        ids.append(config.special_token_id("<|speech_start|>"))
        rendered += "<|speech_start|>"
    modality += [TEXT_MODALITY] * (len(ids) - len(modality))
    return ids, modality, rendered


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
