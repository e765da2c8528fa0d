"""Training data for the staged trainer, built offline, cached and seeded.

    stage 1   ASR pairs       sentences spoken by several Piper / flite voices -> transcript
    stage 2.1 spoken QA       question spoken (varied voices) -> answer text + answer speech
                              (Piper joe, encoded by the codec into target codes)
    stage 2.2 text instruct   prompt -> answer text
    stage 3   all of the above

Answers come from the base LLM itself, generated greedily (self-distillation, as in the
paper's data pipeline): training on them teaches the speech path to say what the LLM would
have written, and keeps the text experts' answers where they were.

Question sources and the evaluation split: questions are built from the Debian bsdgames
quiz files, but never from the files the harness's spoken-QA task uses
(tasks/spoken_qa/data/factoid.jsonl names its source file per item): those files are
excluded whole, and any question string equal to an evaluation question is dropped too.
Nothing is taken from lm-eval's bundled exemplars (MMLU / BBH / GSM8K few-shot), because
the retention suite is built from them.

Everything lands under `cache_dir()/data/<set>-<key>/` (manifest.json + items.jsonl + .npy
files); the key hashes every input that changes the content, so a rerun reuses it.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deeptalk_common.paths import cache_dir

QUIZ_DIR = Path("/usr/share/games/bsdgames/quiz")
DATA_VERSION = 1  # bump when the layout or the prompt templates change
EVAL_FACTOID = Path(__file__).resolve().parent.parent / "tasks" / "spoken_qa" / "data" / "factoid.jsonl"

# quiz file -> question template over field `ask`, answer field `ans` (disjoint from evaluation files)
QUIZ_TEMPLATES: dict[str, tuple[str, int, int]] = {
    "babies": ("What is a baby {} called?", 1, 0),
    "collectives": ("What is a group of {} called?", 0, 1),
    "sexes": ("What is the female counterpart of a {}?", 0, 1),
    "posneg": ("What is the opposite of {}?", 0, 1),
    "flowers": ("What does the {} flower symbolize?", 0, 1),
    "latin": ("What does the Latin word {} mean?", 0, 1),
    "sov": ("Who succeeded {} on the English throne?", 0, 2),
    "chinese": ("In the Chinese zodiac, which year follows the year of the {}?", 0, 1),
}
# Open instructions over quiz subjects: varied text prompts for stage 2.2 and ASR sentences.
INSTRUCTION_TEMPLATES = (
    "Tell me one interesting fact about {}.",
    "Describe {} in one sentence.",
    "Write a short sentence that uses the word {}.",
    "Explain what {} means to a child.",
)

Answerer = Callable[[Sequence[str]], list[str]]


class DataError(ValueError):
    """Bad or missing training data (names the file and item)."""


# --------------------------------------------------------------------------------------
# Questions and prompts from offline text
# --------------------------------------------------------------------------------------
def _first_spelling(field: str) -> str:
    """The first full spelling of a quiz field: optional {x} kept, first of [a|b] / a|b."""
    out, depth_skip, i = [], 0, 0
    stack: list[str] = []  # "[" groups: after the first alternative, skip to the close
    while i < len(field):
        c = field[i]
        if c in "[{":
            stack.append(c)
        elif c in "]}":
            if stack and stack[-1] == "|":
                stack.pop()
                depth_skip -= 1
            stack.pop() if stack else None
        elif c == "|":
            if not stack:
                break  # top-level alternative: keep the first
            if stack[-1] != "|":
                stack.append("|")
                depth_skip += 1
        elif depth_skip == 0:
            out.append(c)
        i += 1
    return re.sub(r"\s+", " ", "".join(out)).strip(" $")


def _read_quiz(path: Path) -> list[list[str]]:
    facts, buf = [], ""
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.endswith("\\"):
            buf += line[:-1]
            continue
        buf += line
        if buf.strip():
            facts.append(buf.split(":"))
        buf = ""
    return facts


def evaluation_exclusions(path: Path = EVAL_FACTOID) -> tuple[set[str], set[str]]:
    """(quiz files used by the evaluation set, its question strings, lower-cased)."""
    if not path.is_file():
        return set(), set()
    files, questions = set(), set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not JSON ({e})") from None
        m = re.search(r"quiz/(\S+)", item.get("source", ""))
        if m:
            files.add(m.group(1))
        questions.add(item.get("question", "").strip().lower())
    return files, questions


def quiz_questions(exclude: Path = EVAL_FACTOID) -> list[dict]:
    """Factoid questions from quiz files disjoint from the evaluation set (deterministic order)."""
    ex_files, ex_questions = evaluation_exclusions(exclude)
    out = []
    for name, (template, ask, ans) in QUIZ_TEMPLATES.items():
        if name in ex_files:
            continue
        path = QUIZ_DIR / name
        if not path.is_file():
            raise DataError(f"quiz file missing: {path} (apt-get install bsdgames)")
        for k, fields in enumerate(_read_quiz(path)):
            if max(ask, ans) >= len(fields):
                continue  # a fact without this field (sov's last king has no successor)
            subject, answer = _first_spelling(fields[ask]), _first_spelling(fields[ans])
            if not subject or not answer or not re.match(r"^[A-Za-z0-9 .,'-]+$", subject):
                continue
            q = template.format(subject)
            if q.strip().lower() in ex_questions:
                continue
            out.append({"id": f"{name}-{k + 1:03d}", "question": q, "reference": answer, "source": f"quiz/{name}"})
    return out


def instruction_prompts(seed: int) -> list[str]:
    """Open text prompts over quiz subjects (seeded choice of template per subject)."""
    rng = random.Random(seed)
    subjects = sorted({q["reference"] for q in quiz_questions()} | {q["question"].split()[-1].strip("?") for q in quiz_questions()})
    subjects = [s for s in subjects if len(s) > 2 and s[0].isalpha()]
    return [rng.choice(INSTRUCTION_TEMPLATES).format(s) for s in subjects]


# --------------------------------------------------------------------------------------
# Self-distilled answers
# --------------------------------------------------------------------------------------
def first_sentences(text: str, max_words: int) -> str:
    """Spoken answers stay short: whole sentences up to `max_words` (at least one sentence)."""
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    out: list[str] = []
    for p in parts:
        if out and len(" ".join(out + [p]).split()) > max_words:
            break
        out.append(p)
    words = " ".join(out).split()
    return " ".join(words[:max_words]) if words else ""


def base_llm_answerer(model, tokenizer, max_new_tokens: int = 48, system: str | None = None) -> Answerer:
    """Greedy answers of an HF causal LM through its chat template."""
    import torch

    def answer(prompts: Sequence[str]) -> list[str]:
        # one left-padded batch: greedy decoding per row is unchanged by the padding (masked)
        texts = [tokenizer.apply_chat_template(
            ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}],
            add_generation_prompt=True, tokenize=False) for p in prompts]
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tokenizer.padding_side = side
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                 else tokenizer.eos_token_id)
        return [tokenizer.decode(g[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for g in gen]

    return answer


def cached_answers(prompts: Sequence[str], answerer: Answerer, answerer_id: str, desc: str = "answers",
                   batch_size: int = 16) -> list[str]:
    """Answers keyed by (answerer_id, prompt) in one JSONL file; only new prompts are generated,
    `batch_size` at a time (the answerer_id should name the batching: padding can move a logit)."""
    path = cache_dir() / "data" / "answers" / f"{_sha(answerer_id)[:16]}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    known: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                known[d["prompt"]] = d["answer"]
    todo = [p for p in dict.fromkeys(prompts) if p not in known]
    with path.open("a") as f:
        bar = tqdm(total=len(todo), desc=desc, disable=not todo)
        for s in range(0, len(todo), batch_size):
            chunk = todo[s : s + batch_size]
            for p, a in zip(chunk, answerer(chunk)):
                known[p] = a
                f.write(json.dumps({"prompt": p, "answer": a}) + "\n")
            f.flush()  # a killed build keeps what it generated
            bar.update(len(chunk))
        bar.close()
    return [known[p] for p in prompts]


# --------------------------------------------------------------------------------------
# Speech
# --------------------------------------------------------------------------------------
@dataclass
class BuiltSet:
    """A built data set: its folder, items (dicts with paths relative to it), failures."""

    root: Path
    items: list[dict]
    manifest: dict

    def path(self, item: dict, key: str) -> Path:
        return self.root / item[key]


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _open_set(name: str, spec: dict) -> tuple[Path, BuiltSet | None]:
    root = cache_dir() / "data" / f"{name}-{_sha({**spec, 'version': DATA_VERSION})[:16]}"
    if (root / "manifest.json").is_file():
        manifest = json.loads((root / "manifest.json").read_text())
        items = [json.loads(l) for l in (root / "items.jsonl").read_text().splitlines() if l.strip()]
        return root, BuiltSet(root, items, manifest)
    root.mkdir(parents=True, exist_ok=True)
    return root, None


def _close_set(root: Path, spec: dict, items: list[dict], failures: list[dict]) -> BuiltSet:
    total = len(items) + len(failures)
    manifest = {"spec": spec, "version": DATA_VERSION, "items": len(items), "failures": failures,
                "failure_rate": len(failures) / total if total else 0.0}
    if total and not items:
        raise DataError(f"{root}: every item failed, first: {failures[0]}")
    (root / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))  # written last: marks done
    return BuiltSet(root, items, manifest)


def speak(text: str, voice: str, seed: int) -> tuple[np.ndarray, int]:
    """`voice` is "engine:name" (e.g. "piper:joe", "flite:slt")."""
    from deeptalk_common.tts import synthesize

    engine, _, name = voice.partition(":")
    return synthesize(text, engine=engine, voice=name, seed=seed)


def answer_codes(codec, text: str, voice: str, seed: int) -> np.ndarray:
    """Codes [Q, T] of `text` as the model should speak it: from the text where the codec can tell
    them (phone units), else `voice` reads it and the codec encodes that."""
    codes = codec.encode_text(text)
    if codes is None:
        codes = codec.encode(*speak(text, voice, seed))
    return codes.detach().cpu().numpy() if hasattr(codes, "detach") else np.asarray(codes)


def build_asr_set(sentences: Sequence[str], voices: Sequence[str], seed: int, name: str = "asr") -> BuiltSet:
    """Stage 1: each sentence spoken by a seeded choice of voice; waveforms stored at 16 kHz."""
    from deeptalk.speech.encoder import prepare_audio

    spec = {"sentences": list(sentences), "voices": list(voices), "seed": seed}
    root, done = _open_set(name, spec)
    if done:
        return done
    rng = random.Random(seed)
    items, failures = [], []
    for k, text in enumerate(tqdm(sentences, desc=f"{name}: synthesising")):
        voice = rng.choice(list(voices))
        try:
            wav, sr = speak(text, voice, seed + k)
            audio = prepare_audio(wav, sr, name=f"{name}[{k}] ({voice})")
        except Exception as e:  # counted and reported in the manifest, never silently dropped
            failures.append({"index": k, "text": text, "voice": voice, "error": f"{type(e).__name__}: {e}"})
            continue
        np.save(root / f"{k:05d}.npy", audio.samples)
        items.append({"id": f"{name}-{k:05d}", "text": text, "voice": voice, "wav": f"{k:05d}.npy",
                      "seconds": len(audio.samples) / 16000})
    return _close_set(root, spec, items, failures)


def build_spoken_qa(questions: Sequence[str], answers: Sequence[str], codec, codec_id: str,
                    voices: Sequence[str], answer_voice: str, seed: int, name: str = "spoken_qa") -> BuiltSet:
    """Stage 2.1: question speech (varied voices) + answer text + answer codes [Q, T] (int16/32)."""
    from deeptalk.speech.encoder import prepare_audio

    if len(questions) != len(answers):
        raise DataError(f"{name}: {len(questions)} questions but {len(answers)} answers")
    spec = {"questions": list(questions), "answers": list(answers), "codec": codec_id,
            "voices": list(voices), "answer_voice": answer_voice, "seed": seed}
    root, done = _open_set(name, spec)
    if done:
        return done
    rng = random.Random(seed)
    items, failures = [], []
    for k, (q, a) in enumerate(tqdm(list(zip(questions, answers)), desc=f"{name}: synthesising + encoding")):
        voice = rng.choice(list(voices))
        try:
            if not a.strip():
                raise DataError("empty answer")
            wav, sr = speak(q, voice, seed + k)
            audio = prepare_audio(wav, sr, name=f"{name}[{k}] question ({voice})")
            codes = answer_codes(codec, a, answer_voice, seed + k)
        except Exception as e:
            failures.append({"index": k, "question": q, "voice": voice, "error": f"{type(e).__name__}: {e}"})
            continue
        np.save(root / f"{k:05d}-q.npy", audio.samples)
        np.save(root / f"{k:05d}-codes.npy", codes.astype(np.int32))
        items.append({"id": f"{name}-{k:05d}", "question": q, "answer": a, "voice": voice,
                      "wav": f"{k:05d}-q.npy", "codes": f"{k:05d}-codes.npy", "frames": int(codes.shape[-1])})
    return _close_set(root, spec, items, failures)


def build_text_set(prompts: Sequence[str], answers: Sequence[str], name: str = "text") -> BuiltSet:
    """Stage 2.2: prompt -> answer text pairs (no audio)."""
    spec = {"prompts": list(prompts), "answers": list(answers)}
    root, done = _open_set(name, spec)
    if done:
        return done
    items, failures = [], []
    for k, (p, a) in enumerate(zip(prompts, answers)):
        if not a.strip():
            failures.append({"index": k, "prompt": p, "error": "empty answer"})
            continue
        items.append({"id": f"{name}-{k:05d}", "prompt": p, "answer": a})
    return _close_set(root, spec, items, failures)


def load_wav(built: BuiltSet, item: dict, key: str = "wav") -> np.ndarray:
    path = built.path(item, key)
    if not path.is_file():
        raise DataError(f"{built.root}: item {item.get('id')}: missing file {item[key]}")
    return np.load(path)

