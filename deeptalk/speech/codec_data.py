"""Speech for fitting and evaluating the offline codec, built only from what ships offline.

Fitting and evaluation never share a sentence source or a voice:

- fit sentences: the MMLU few-shot exemplars that lm-eval ships (split into sentences)
  plus templated sentences; fit voices: Piper joe at several rates/noises, flite kal,
  awb, rms, and pitch-raised copies of joe, kal and awb (every offline voice but slt is
  male: without higher voices the codebooks fail on one, measured).
- refiner speech (decoding only): the fit speech plus four Festival female voices
  (Catalan, Czech, Finnish, Italian) reading fit sentences.
- eval sentences: the bsdgames quiz files (capitals, elements, animals, Shakespeare);
  eval voices: flite slt (a voice the codec never saw), and Piper joe reported
  separately as "seen voice, unseen sentences" (the voice the reference model speaks).
"""
from __future__ import annotations

import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeptalk_common.tts import synthesize

FIT_VOICES = (("piper", "joe"), ("piper", "joe-fast"), ("piper", "joe-slow"),
              ("piper", "joe-lively"), ("flite", "kal"), ("flite", "awb"), ("flite", "rms"))
# (engine, voice, semitones): pitch-raised copies of fit speech (same sentences, no new TTS)
FIT_PITCH_SHIFTED = (("piper", "joe", 5.0), ("flite", "kal", 6.0), ("flite", "awb", 7.0))
# Female voices (Festival, non-English) that train only the mel refiner: the codebooks
# were fitted without them, and the codes must not change under the models trained on them.
REFINER_EXTRA_VOICES = (("festival", "ona-ca"), ("festival", "dita-cs"), ("festival", "lj-fi"),
                        ("festival", "lp-it"))
HELDOUT_VOICES = (("flite", "slt"),)
SEEN_VOICE = (("piper", "joe"),)

QUIZ_DIR = Path("/usr/share/games/bsdgames/quiz")

_ALLOWED = re.compile(r"^[A-Za-z0-9 ,.'?!;:()-]+$")


@dataclass(frozen=True)
class Utterance:
    id: str
    text: str
    engine: str
    voice: str
    semitones: float = 0.0      # pitch shift applied after synthesis (fit augmentation)


def mmlu_sentences() -> list[str]:
    """Plain sentences from the MMLU chain-of-thought exemplars shipped inside lm-eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        raise FileNotFoundError("lm-eval is not installed: it ships the MMLU exemplars used to fit the codec")
    path = Path(spec.submodule_search_locations[0]) / "tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
    prompts = json.loads(path.read_text())
    out = []
    for subject in sorted(prompts):
        text = re.sub(r"\([A-J]\)", " ", prompts[subject])  # drop answer-option letters
        for s in re.split(r"(?<=[.?!])\s+|\n+", text):
            s = " ".join(s.split())
            if s.startswith(("Q:", "A:")):
                s = s[2:].strip()
            words = s.split()
            truth_words = sum(w.strip(",.") in ("True", "False") for w in words)
            if (5 <= len(words) <= 24 and _ALLOWED.match(s) and truth_words < 2
                    and not s.startswith("The following are")):
                out.append(s)
    return list(dict.fromkeys(out))  # dedupe, keep order


def template_sentences(n: int, seed: int = 0) -> list[str]:
    """Templated everyday sentences: numbers, dates, names, places (things answers contain)."""
    rng = random.Random(seed)
    names = ["Alice", "Bob", "Maria", "Chen", "Fatima", "Oliver", "Priya", "Lucas", "Emma", "Kenji"]
    places = ["the library", "the station", "the market", "the old bridge", "the museum",
              "the harbour", "the kitchen", "the garden", "the office", "the stadium"]
    things = ["a red umbrella", "three green apples", "the blue notebook", "an old guitar",
              "a cup of coffee", "the morning paper", "a silver key", "two tickets"]
    months = ["January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December"]
    templates = [
        "{n} went to {p} on the {d}th of {m}.",
        "Please bring {t} to {p} before {h} o'clock.",
        "The answer is {k}, not {k2}.",
        "In {y}, {n} moved to {p} with {t}.",
        "How many people were at {p} yesterday? About {k}.",
        "{n} said that {t} was left at {p}.",
        "The train leaves at {h} {mm} and arrives at {h2} o'clock.",
        "Is it true that {n} found {t} near {p}?",
    ]
    out = []
    for _ in range(n):
        out.append(rng.choice(templates).format(
            n=rng.choice(names), p=rng.choice(places), t=rng.choice(things),
            m=rng.choice(months), d=rng.randint(4, 20), h=rng.randint(1, 11), h2=rng.randint(1, 12),
            mm=rng.choice(["fifteen", "thirty", "forty five"]), k=rng.randint(2, 999),
            k2=rng.randint(2, 999), y=rng.randint(1900, 2024)))
    return list(dict.fromkeys(out))


def _quiz_field(s: str) -> str:
    """One readable form of a bsdgames quiz field: first alternative, optional parts kept."""
    s = s.split("|")[0] if "{" not in s and "[" not in s else s
    s = re.sub(r"\[([^\]|]*)(\|[^\]]*)?\]", r"\1", s)  # [a|b] -> a
    s = s.replace("{", "").replace("}", "")
    return " ".join(s.replace("\\", " ").split()).strip(" :")


def quiz_sentences() -> list[str]:
    """Held-out sentences from the bsdgames quiz files (a source the codec is not fitted on)."""
    if not QUIZ_DIR.is_dir():
        raise FileNotFoundError(f"{QUIZ_DIR} not found: apt-get install bsdgames (held-out codec sentences)")
    out = []
    for region in ("africa", "america", "asia", "europe"):
        for line in (QUIZ_DIR / region).read_text(errors="replace").splitlines():
            if ":" in line:
                country, capital = (_quiz_field(x) for x in line.split(":")[:2])
                if country and capital:
                    out.append(f"The capital of {country} is {capital}.")
    for line in (QUIZ_DIR / "elements").read_text(errors="replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 4:
            out.append(f"Element number {parts[1]} is {_quiz_field(parts[3])}.")
    for line in (QUIZ_DIR / "babies").read_text(errors="replace").splitlines():
        if ":" in line:
            baby, adult = (_quiz_field(x.split("|")[0]) for x in line.split(":")[:2])
            out.append(f"A young {adult} is called a {baby}.")
    return [s for s in dict.fromkeys(out) if _ALLOWED.match(s)]


def fit_utterances(per_voice: int, seed: int = 0) -> list[Utterance]:
    """Each fit voice speaks its own random draw of fit sentences."""
    pool = mmlu_sentences() + template_sentences(max(200, per_voice), seed=seed)
    rng = random.Random(seed)
    out = []
    for engine, voice in FIT_VOICES:
        for i, text in enumerate(rng.sample(pool, min(per_voice, len(pool)))):
            out.append(Utterance(f"fit-{voice}-{i:05d}", text, engine, voice))
    for engine, voice, semitones in FIT_PITCH_SHIFTED:
        same = [u for u in out if u.engine == engine and u.voice == voice and not u.semitones]
        out += [Utterance(f"{u.id}-up{semitones:g}", u.text, engine, voice, semitones) for u in same]
    return out


def refiner_utterances(per_voice: int, seed: int = 0) -> list[Utterance]:
    """The fit speech plus the refiner's female voices, each reading its own draw of fit sentences."""
    out = fit_utterances(per_voice, seed=seed)
    pool = mmlu_sentences() + template_sentences(max(200, per_voice), seed=seed)
    rng = random.Random(seed + 1)
    for engine, voice in REFINER_EXTRA_VOICES:
        out += [Utterance(f"refine-{voice}-{i:05d}", text, engine, voice)
                for i, text in enumerate(rng.sample(pool, min(per_voice, len(pool))))]
    return out


def eval_utterances(n: int, seed: int = 0, voices=HELDOUT_VOICES) -> list[Utterance]:
    """n held-out quiz sentences per voice (the same sentences for every voice)."""
    pool = quiz_sentences()
    texts = random.Random(seed).sample(pool, min(n, len(pool)))
    return [Utterance(f"eval-{voice}-{i:04d}", t, e, voice)
            for e, voice in voices for i, t in enumerate(texts)]


def load_audio(utt: Utterance, sample_rate: int) -> np.ndarray:
    """The utterance's speech (TTS cache), resampled to `sample_rate`."""
    wav, _ = synthesize(utt.text, utt.engine, utt.voice, sample_rate=sample_rate)
    if utt.semitones:
        import librosa

        wav = librosa.effects.pitch_shift(wav, sr=sample_rate, n_steps=utt.semitones).astype(np.float32)
    return wav
