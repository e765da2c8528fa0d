"""Data sets -> training sequences (`Example`), built with the generator's own prompt layout, and batches."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from deeptalk.sequence import (
    TEXT_MODALITY,
    answer_steps,
    build_prompt_ids,
    spoken_answer_modality,
    word_aligned_steps,
    word_segments,
)

ASR_INSTRUCTION = "Transcribe what was said."


@dataclass
class Example:
    ids: list[int]
    labels: list[int]
    modality: list[int]
    feats: torch.Tensor | None = None  # Whisper features [T, d] for the <|audio_in|> slots
    audio: torch.Tensor | None = None  # [Q, L] delayed codes (-1 = none) aligned with ids

    @property
    def tokens(self) -> int:
        return sum(l != -100 for l in self.labels)


def _answer_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _spoken_items(item_set, encoder, desc: str):
    """(item, Whisper features, number of speech positions) for every spoken item of a set."""
    from deeptalk.data import load_wav
    from deeptalk.speech.encoder import num_positions, prepare_audio

    for item in tqdm(item_set.items, desc=desc):
        feats = encoder.whisper_features(prepare_audio(load_wav(item_set, item), 16000, name=item["id"]))
        if encoder.reads_as_text:  # a CTC projector's positions are the tokens it hears (it is frozen after stage 1)
            with torch.no_grad():
                p = int(encoder([feats])[1][0])
        else:
            p = num_positions(feats.shape[0], encoder.config.stride)
        yield item, feats, p


def asr_examples(asr_set, encoder, tokenizer, config, instructions: list[str] | None = None,
                 seed: int = 0) -> list[Example]:
    """Transcription turns: the instruction, the speech, the transcript. `instructions`: a seeded
    choice among several wordings per turn (default: ASR_INSTRUCTION alone), so that a model
    learns to transcribe when asked, not when asked in one sentence."""
    wordings = list(instructions or [ASR_INSTRUCTION])
    rng = random.Random(seed + 17)
    out = []
    for item, feats, p in _spoken_items(asr_set, encoder, "whisper features (asr)"):
        ids, mod, _ = build_prompt_ids(tokenizer, config, rng.choice(wordings), p, speak=False,
                                       speech_as_text=encoder.reads_as_text)
        ans = _answer_ids(tokenizer, item["text"]) + [tokenizer.eos_token_id]
        out.append(Example(ids + ans, [-100] * len(ids) + ans, mod + [TEXT_MODALITY] * len(ans), feats))
    return out


def spoken_answer_example(ids: list[int], modality: list[int], answer: str, codes, tokenizer, config,
                          feats: torch.Tensor | None = None, codec=None) -> Example:
    """A request (ids, modality; it ends in <|speech_start|>) answered in speech: the answer's text
    channel and its codes in the delay pattern, both trained.

    `config.answer_layout` "block": `codes` [Q, T] are the whole answer's. "words": `codec` reads
    each word of the answer (deeptalk/sequence.py word_segments; `codes` is not used).

    The text channel is trained up to its end only: the generator forces <|text_pad|> once the
    text has ended and while it holds a word (generate._SpokenAnswer), so the pads teach nothing,
    and their frozen output row (special tokens do not train) made them most of a 9-nat text
    loss that drowned the words' signal. The end is taught as the tokenizer's end of turn, which
    the generator takes as the text's end and the base LLM already predicts; the input there
    stays <|text_end|>."""
    answer_ids = _answer_ids(tokenizer, answer)
    decide: dict[int, int] = {}
    if getattr(config, "answer_layout", "block") == "words":
        if codec is None:
            raise ValueError("the 'words' answer layout builds a spoken answer's codes word by word: pass the codec")
        text, grid, decide = word_aligned_steps(word_segments(answer_ids, tokenizer, codec), config)
    else:
        text, grid = answer_steps(answer_ids, codes, config)
    audio = torch.full((config.num_codebooks, len(ids) + len(text)), -1, dtype=torch.long)
    audio[:, len(ids):] = grid
    end, pad = config.special_token_id("<|text_end|>"), config.special_token_id("<|text_pad|>")
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else end
    labels = [eos if t == end else decide.get(k, -100) if t == pad else t for k, t in enumerate(text)]
    answer_mod = [spoken_answer_modality(config)] * len(text)
    return Example(ids + text, [-100] * len(ids) + labels, modality + answer_mod, feats, audio)


def qa_examples(qa_set, encoder, tokenizer, config, written: bool = False, codec=None,
                spoken: bool = True) -> list[Example]:
    """Spoken questions answered in speech (S2S); `written`: each question also written (T2S);
    `spoken=False`: the written ones alone (no Whisper features: `encoder` is not read).
    `codec`: the "words" answer layout reads the answers with it (spoken_answer_example)."""
    out = []
    words = config.answer_layout == "words"   # the codec reads each word: the stored codes are not needed
    items = _spoken_items(qa_set, encoder, "whisper features (spoken qa)") if spoken else \
        ((item, None, None) for item in qa_set.items)
    for item, feats, p in items:
        codes = None if words else np.load(qa_set.path(item, "codes"))
        if spoken:
            ids, mod, _ = build_prompt_ids(tokenizer, config, None, p, speak=True, speech_as_text=encoder.reads_as_text)
            out.append(spoken_answer_example(ids, mod, item["answer"], codes, tokenizer, config, feats, codec))
        if written:
            ids, mod, _ = build_prompt_ids(tokenizer, config, item["question"], None, speak=True)
            out.append(spoken_answer_example(ids, mod, item["answer"], codes, tokenizer, config, codec=codec))
    return out


# the instructions of "repeat this sentence" turns; the tts task's own wording is not among them
REPEAT_TEMPLATES = ("Say this: {text}", "Read this aloud: {text}", "Please say the following sentence: {text}",
                    "Repeat after me: {text}", "Repeat this sentence: {text}")
WORD_LIST_TEMPLATES = ("Say these words: {text}", "Read this list aloud: {text}", "Please say each of these words: {text}")
NAME_LIST_TEMPLATES = ("Say these names: {text}", "Read these names aloud: {text}", "Please say each of these names: {text}")


def spoken_codes(codec, texts: list[str], voice: str = "piper:joe", seed: int = 0) -> list[np.ndarray]:
    """Codes [Q, T] of each text spoken in the codec's voice (data.answer_codes)."""
    from deeptalk.data import answer_codes

    return [answer_codes(codec, t, voice, seed + k)
            for k, t in enumerate(tqdm(texts, desc="spoken answers: codes", unit="utt"))]


def repeat_examples(texts: list[str], codes: list[np.ndarray] | None, tokenizer, config, seed: int,
                    templates: tuple[str, ...] = REPEAT_TEMPLATES, codec=None) -> list[Example]:
    """"Repeat this sentence" turns: the sentence written in an instruction, answered in speech
    (`codes` per text; the "words" layout reads the texts with `codec` instead)."""
    rng = random.Random(seed)
    out = []
    for k, text in enumerate(tqdm(texts, desc="repeat turns", unit="turn", disable=len(texts) < 500)):
        ids, mod, _ = build_prompt_ids(tokenizer, config, rng.choice(templates).format(text=text), None, speak=True)
        out.append(spoken_answer_example(ids, mod, text, None if codes is None else codes[k], tokenizer, config,
                                         codec=codec))
    return out


def text_examples(text_set, tokenizer, config) -> list[Example]:
    out = []
    for item in text_set.items:
        ids, mod, _ = build_prompt_ids(tokenizer, config, item["prompt"], None, speak=False)
        ans = _answer_ids(tokenizer, item["answer"]) + [tokenizer.eos_token_id]
        out.append(Example(ids + ans, [-100] * len(ids) + ans, mod + [TEXT_MODALITY] * len(ans)))
    return out


def corpus_examples(tokenizer, num_tokens: int, block: int = 256) -> list[Example]:
    """Plain offline prose (the upcycling calibration split, deeptalk/upcycle.py) as text-only
    language-modelling rows: broad text for stage 2.2 to heal the text path on, beside the
    instruction answers (`data.text_corpus_tokens` in a recipe)."""
    from deeptalk.upcycle import calibration_texts, token_blocks

    blocks = token_blocks(tokenizer, calibration_texts("calib"), num_tokens, block)
    return [Example(row.tolist(), row.tolist(), [TEXT_MODALITY] * block) for row in blocks]


def collate(examples: list[Example], pad_id: int, num_codebooks: int, max_len: int | None = None) -> dict:
    """Right-padded batch; audio rows -1 (nothing) / labels -100 where absent."""
    n = max(len(e.ids) for e in examples)
    if max_len is not None and n > max_len:
        raise ValueError(f"a training sequence has {n} tokens, more than max_len={max_len}: shorten the data")
    b = len(examples)
    ids = torch.full((b, n), pad_id, dtype=torch.long)
    labels = torch.full((b, n), -100, dtype=torch.long)
    modality = torch.zeros((b, n), dtype=torch.long)
    mask = torch.zeros((b, n), dtype=torch.long)
    audio = torch.full((b, num_codebooks, n), -1, dtype=torch.long) if num_codebooks else None
    has_audio = any(e.audio is not None for e in examples)
    for i, e in enumerate(examples):
        L = len(e.ids)
        ids[i, :L] = torch.tensor(e.ids)
        labels[i, :L] = torch.tensor(e.labels)
        modality[i, :L] = torch.tensor(e.modality)
        mask[i, :L] = 1
        if e.audio is not None:
            audio[i, :, :L] = e.audio
    batch = {"input_ids": ids, "labels": labels, "token_modality": modality, "attention_mask": mask,
             "feats": [e.feats for e in examples if e.feats is not None]}
    if has_audio:
        batch["audio_codes"] = audio
        batch["audio_labels"] = torch.where(audio >= 0, audio, torch.full_like(audio, -100))
    return batch
