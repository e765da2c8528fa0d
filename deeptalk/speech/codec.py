"""The speech codec interface (docs/design.md §6): audio <-> discrete tokens [Q, T].

A codec turns a waveform into `num_codebooks` parallel token streams at `frame_rate`
positions per second, each token in [0, codebook_size), and back. The model's speech
heads predict those Q streams (with the delay pattern); the streaming generator turns
frames into audio chunk by chunk with `StreamingDecoder`.

Implementations: `OfflineCodec` (codec_offline.py: residual k-means over stacked
log-mel frames + Griffin-Lim; fitted here and shipped in deeptalk/speech/assets/) and
`SNACCodec` (codec_snac.py: SNAC 24 kHz when its weights are on disk or reachable).

    codec = load_codec("offline")          # deeptalk/speech/codec_loader.py
    codes = codec.encode(wav, sr)          # int64 [Q, T]
    audio = codec.decode(codes)            # float32 [T * samples_per_frame] at codec.sample_rate
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class CodecError(ValueError):
    """Bad input to a codec: wrong shape, dtype, range or sample rate."""


class SpeechCodec(ABC):
    """Waveform <-> integer codes [num_codebooks, T]."""

    name: str
    sample_rate: int           # rate of decoded audio (encode resamples to it)
    frame_rate: float          # code positions per second
    num_codebooks: int
    codebook_size: int
    samples_per_frame: int     # decoded samples per position (sample_rate / frame_rate)
    # the code that ends a spoken word (phone units: the space), where the codes have one;
    # the "words" answer layout needs it (deeptalk/sequence.py)
    word_end_code: int | None = None

    @abstractmethod
    def encode(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """int64 [num_codebooks, T] for a mono waveform at rate `sr` (resampled here)."""

    @abstractmethod
    def decode(self, codes: np.ndarray, *, frame_offset: int = 0) -> np.ndarray:
        """float32 waveform of T * samples_per_frame samples at `sample_rate`.

        `frame_offset` is the absolute position of codes[:, 0] in a longer stream; codecs
        whose decoding depends on position (Griffin-Lim's starting phase) use it so that a
        chunk decodes like the same frames inside the full decode.
        """

    def encode_text(self, text: str) -> np.ndarray | None:
        """Codes [Q, T] for `text` spoken in the codec's own voice, where the codec can tell them
        without audio (phone units); None: synthesise the text and `encode` the audio."""
        return None

    def describe(self) -> dict:
        """What a result file records about the codec."""
        return {"name": self.name, "sample_rate": self.sample_rate, "frame_rate": self.frame_rate,
                "num_codebooks": self.num_codebooks, "codebook_size": self.codebook_size}

    @property
    def stream_context(self) -> tuple[int, int] | None:
        """(left context, lookahead) in positions that a streaming decode needs to match the full
        decode; None: the caller's settings serve."""
        return None

    def stream_decoder(self, left_context: int = 8, lookahead: int = 1, **kwargs) -> StreamingDecoder:
        words = sorted(set(kwargs) & {"min_first", "min_chunk"})
        if words:   # chunk sizes in phonemes belong to a codec that speaks whole words
            raise CodecError(f"{self.name} codec: {', '.join(words)} apply to a codec that speaks whole words "
                             "(phones); this one decodes frames (chunk_frames)")
        need = self.stream_context
        if need is not None:   # a decoder with a wider view than asked for gets what it needs
            left_context, lookahead = max(left_context, need[0]), max(lookahead, need[1])
        return StreamingDecoder(self, left_context=left_context, lookahead=lookahead, **kwargs)

    # --- input checks shared by implementations ------------------------------------
    def check_codes(self, codes) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks:
            raise CodecError(f"{self.name} codec: codes must be [{self.num_codebooks}, T], got shape {codes.shape}")
        if codes.size and not np.issubdtype(codes.dtype, np.integer):
            raise CodecError(f"{self.name} codec: codes must be integers, got {codes.dtype}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            bad = np.argwhere((codes < 0) | (codes >= self.codebook_size))[0]
            raise CodecError(f"{self.name} codec: code {codes[tuple(bad)]} at (codebook {bad[0]}, frame {bad[1]}) "
                             f"is outside [0, {self.codebook_size})")
        return codes.astype(np.int64, copy=False)

    @staticmethod
    def check_wav(wav, sr) -> np.ndarray:
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim == 2 and 1 in wav.shape:
            wav = wav.reshape(-1)
        if wav.ndim != 1:
            raise CodecError(f"audio must be mono 1-D, got shape {wav.shape}")
        if not isinstance(sr, (int, np.integer)) or sr <= 0:
            raise CodecError(f"sample rate must be a positive integer, got {sr!r}")
        if not np.all(np.isfinite(wav)):
            raise CodecError("audio contains NaN or infinite samples")
        return wav


class StreamingDecoder:
    """Decode codes chunk by chunk as they are generated.

    Each `push(codes[Q, n])` decodes the frames not yet played, together with
    `left_context` earlier frames, and returns the audio that is final: it holds back the
    last `lookahead` frames (their sound depends on frames still to come) and a
    `crossfade`-sample tail that is blended with the next chunk, so chunk boundaries do
    not click. `flush()` returns the rest. The pushed chunks concatenate to exactly
    `T * samples_per_frame` samples, the length of `codec.decode(all codes)`; the
    samples are close to, not equal to, the full decode (Griffin-Lim refines phase over
    the window it sees) — `deeptalk-codec eval` measures the gap in log-mel.
    """

    def __init__(self, codec: SpeechCodec, left_context: int = 8, lookahead: int = 1,
                 crossfade: int | None = None):
        if left_context < 0 or lookahead < 0:
            raise ValueError("left_context and lookahead must be >= 0")
        self.codec, self.left_context, self.lookahead = codec, left_context, lookahead
        spf = codec.samples_per_frame
        self.crossfade = min(spf, spf // 4 if crossfade is None else crossfade)
        self._codes = np.zeros((codec.num_codebooks, 0), dtype=np.int64)
        self._emitted = 0          # samples returned so far
        self._tail = np.zeros(0, dtype=np.float32)   # decoded, held for the crossfade

    @property
    def frames(self) -> int:
        return self._codes.shape[1]

    def push(self, codes: np.ndarray) -> np.ndarray:
        codes = self.codec.check_codes(codes)
        self._codes = np.concatenate([self._codes, codes], axis=1)
        return self._decode(final=False)

    def flush(self) -> np.ndarray:
        return self._decode(final=True)

    def _decode(self, final: bool) -> np.ndarray:
        spf = self.codec.samples_per_frame
        ready = self.frames if final else self.frames - self.lookahead     # frames whose audio is final
        end = ready * spf if final else max(0, ready * spf - self.crossfade)
        if end <= self._emitted:
            return np.zeros(0, dtype=np.float32)
        first = self._emitted // spf                    # first frame not fully emitted
        start = max(0, first - self.left_context)
        audio = self.codec.decode(self._codes[:, start:], frame_offset=start)
        seg = audio[self._emitted - start * spf : end - start * spf]
        if len(self._tail):                             # blend the held tail into the new decode
            n = min(len(self._tail), len(seg))
            w = np.linspace(0.0, 1.0, n + 2, dtype=np.float32)[1:-1]
            seg = seg.copy()
            seg[:n] = (1 - w) * self._tail[:n] + w * seg[:n]
        # keep the crossfade region after `end` for the next chunk
        self._tail = audio[end - start * spf : end - start * spf + self.crossfade] if not final else np.zeros(0, np.float32)
        self._emitted = end
        return seg.astype(np.float32, copy=False)
