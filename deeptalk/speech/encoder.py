"""Speech in: a frozen Whisper encoder and a trainable projector into the LLM.

    wav (any rate) -> 16 kHz -> log-mel (80 x 100 Hz) -> Whisper encoder (50 Hz, frozen)
        -> stack `stride` frames -> MLP -> [n_positions, llm_hidden]   (projector, trained)

Whisper was trained on 30 s windows, so its encoder expects 3000 mel frames and has a fixed
positional table of 1500 rows. Running it on 30 s of padding for a 2 s question costs ~15x
the work, so the default `window="exact"` feeds only the real frames (2 * ceil(len / 320))
and slices the positional table to match. `window="pad30"` is Whisper's own way (pad to
30 s, then keep the first ceil(len / 320) output frames); the two differ slightly because
attention in "pad30" also sees the padding. Which one a projector was trained with is part
of its config: use the same at inference.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

WHISPER_RATE = 16000
SAMPLES_PER_FRAME = 320  # Whisper's encoder output runs at 50 Hz (hop 160, conv stride 2)
MAX_FRAMES = 1500  # Whisper's positional table: 30 s
CLIP_LEVEL = 1.0


@dataclass
class PreparedAudio:
    """A waveform ready for Whisper, with what was done to it (recorded, never hidden)."""

    samples: np.ndarray  # float32, 16 kHz, mono, in [-1, 1]
    source_rate: int
    clipped: bool = False  # some samples were beyond [-1, 1] and were clamped
    silent: bool = False  # peak below 1e-4: Whisper will see near-silence
    truncated: bool = False  # longer than 30 s: the tail was cut

    @property
    def num_frames(self) -> int:
        return math.ceil(len(self.samples) / SAMPLES_PER_FRAME)


def prepare_audio(samples, sample_rate: int, name: str = "audio") -> PreparedAudio:
    """Check, downmix, resample to 16 kHz and clamp one waveform.

    Empty or non-finite audio is an error naming `name`; clipping is clamped and flagged;
    silence passes (it is valid input) and is flagged.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:  # [channels, n] or [n, channels]: downmix along the short axis
        x = x.mean(axis=0 if x.shape[0] < x.shape[1] else 1)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected mono samples [n] or [channels, n], got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name}: empty audio (0 samples)")
    if not sample_rate or sample_rate <= 0:
        raise ValueError(f"{name}: invalid sample rate {sample_rate!r}")
    bad = ~np.isfinite(x)
    if bad.any():
        kinds = sorted({"NaN" if np.isnan(v) else "Inf" for v in x[bad][:100]})
        raise ValueError(f"{name}: {int(bad.sum())} non-finite samples ({'/'.join(kinds)}) at index {int(np.argmax(bad))}")
    if sample_rate != WHISPER_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(int(sample_rate), WHISPER_RATE)
        x = resample_poly(x, WHISPER_RATE // g, int(sample_rate) // g).astype(np.float32)
        if x.size == 0:
            raise ValueError(f"{name}: too short to resample ({len(samples)} samples at {sample_rate} Hz)")
    clipped = bool(np.abs(x).max() > CLIP_LEVEL)
    if clipped:
        x = np.clip(x, -CLIP_LEVEL, CLIP_LEVEL)
    truncated = len(x) > MAX_FRAMES * SAMPLES_PER_FRAME
    if truncated:
        x = x[: MAX_FRAMES * SAMPLES_PER_FRAME]
    silent = bool(np.abs(x).max() < 1e-4)
    return PreparedAudio(x, int(sample_rate), clipped=clipped, silent=silent, truncated=truncated)


TEXT_PROJECTORS = ("ctc", "ctc_chars")  # projectors whose positions the LLM reads as text


def check_decode(config: SpeechEncoderConfig, decode: str, owner: str = "encoder") -> None:
    """`decode` is a way `config`'s head can be read (a ValueError says why not)."""
    if decode not in ("greedy", "lexicon"):
        raise ValueError(f"decode must be 'greedy' or 'lexicon', got {decode!r}")
    if decode == "lexicon" and not (config.projector == "ctc_chars" and config.pieces):
        kind = f"{config.projector!r}" + (" over characters" if config.projector == "ctc_chars" else "")
        raise ValueError(f"lexicon decoding needs a piece head; this {owner}'s projector is {kind} "
                         f"(a piece head is projector: ctc_chars, pieces: N)")


@dataclass
class SpeechEncoderConfig:
    whisper: str = "tiny.en"  # a name for load_whisper (offline: tiny.en) or a path
    stride: int = 2  # 50 Hz Whisper frames stacked per LLM position (1 = the paper's 50 Hz)
    window: str = "exact"  # "exact" (real frames only) | "pad30" (Whisper's 30 s window)
    hidden_size: int = 576  # the LLM's hidden size
    projector_hidden: int | None = None  # MLP width; default: hidden_size
    # "mlp": one position per `stride` frames, read by the speech experts (the paper's projector);
    # "ctc": CTC over the LLM's vocabulary, one soft text embedding per token heard, read as text
    # (deeptalk/speech/ctc_projector.py); "ctc_chars": CTC over characters, the transcript read
    # as the LLM's own tokens (deeptalk/speech/char_ctc.py)
    projector: str = "mlp"
    projector_layers: int = 0  # ctc: self-attention layers over the utterance after the conv
    # ctc: Whisper's last `tune_blocks` encoder blocks train with the projector (copies that
    # travel in its state, deeptalk/speech/whisper_top.py); 0 = the whole encoder frozen
    tune_blocks: int = 0
    pieces: int = 0  # ctc_chars: 0 = characters, N = a BPE of N word pieces learnt on the hearing corpus
    # ctc_chars with pieces: how the transcript is read off the head at inference. "greedy": the
    # argmax spelling; "lexicon": beam search over English words, the n best rescored by the LLM
    # (deeptalk/speech/lexicon_decode.py; `lexicon` overrides LexiconConfig's fields)
    decode: str = "greedy"
    lexicon: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Projector(nn.Module):
    """Stack `stride` consecutive frames, then a 2-layer MLP into the LLM's hidden size."""

    def __init__(self, in_dim: int, out_dim: int, stride: int, hidden: int | None = None):
        super().__init__()
        self.stride = stride
        hidden = hidden or out_dim
        self.fc1 = nn.Linear(in_dim * stride, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, ceil(T/s), H]
        b, t, d = feats.shape
        pad = (-t) % self.stride
        if pad:  # zero frames complete the last group; lengths are tracked separately
            feats = torch.nn.functional.pad(feats, (0, 0, 0, pad))
        x = feats.reshape(b, (t + pad) // self.stride, d * self.stride)
        return self.fc2(self.act(self.fc1(x)))


def num_positions(num_frames: int, stride: int) -> int:
    return math.ceil(num_frames / stride)


def build_projector(config: SpeechEncoderConfig, whisper_encoder: nn.Module | int, ctc_vocab: torch.Tensor | None = None,
                    pieces: str | None = None) -> nn.Module:
    """The trainable half of the speech encoder, reading the Whisper encoder's features.
    `whisper_encoder`: the encoder, or only its width where the features come ready-made (a
    training pack); `ctc_vocab`: the LLM tokens a ctc head emits; `pieces`: the BPE a ctc_chars
    head spells in."""
    width = whisper_encoder if isinstance(whisper_encoder, int) else whisper_encoder.ln_post.normalized_shape[0]
    if config.projector in ("ctc", "ctc_chars"):
        from deeptalk.speech.char_ctc import CharCTC
        from deeptalk.speech.ctc_projector import CTCProjector
        from deeptalk.speech.whisper_top import WhisperTop

        if config.tune_blocks and isinstance(whisper_encoder, int):
            raise ValueError("SpeechEncoderConfig.tune_blocks trains copies of Whisper's last blocks: "
                             "building the head needs the Whisper encoder, not only its width")
        top = WhisperTop(whisper_encoder, len(whisper_encoder.blocks) - config.tune_blocks) if config.tune_blocks else None
        if config.projector == "ctc_chars":
            if bool(config.pieces) != (pieces is not None):
                raise ValueError(f"SpeechEncoderConfig.pieces={config.pieces} but the BPE was "
                                 f"{'not ' if pieces is None else ''}given")
            return CharCTC(width, config.hidden_size, config.stride, config.projector_hidden,
                           layers=config.projector_layers, top=top, pieces=pieces)
        if ctc_vocab is None:
            raise ValueError("a CTC projector needs its vocabulary (the LLM token ids it can emit)")
        return CTCProjector(width, config.hidden_size, config.stride, ctc_vocab, config.projector_hidden,
                            layers=config.projector_layers, top=top)
    return Projector(width, config.hidden_size, config.stride, config.projector_hidden)


class SpeechEncoder(nn.Module):
    """Whisper encoder (frozen) + projector (trainable)."""

    def __init__(self, whisper_encoder: nn.Module, config: SpeechEncoderConfig, ctc_vocab: torch.Tensor | None = None,
                 pieces: str | None = None):
        super().__init__()
        if config.projector not in ("mlp", "ctc", "ctc_chars"):
            raise ValueError(f"SpeechEncoderConfig.projector must be 'mlp', 'ctc' or 'ctc_chars', got {config.projector!r}")
        if config.window not in ("exact", "pad30"):
            raise ValueError(f"SpeechEncoderConfig.window must be 'exact' or 'pad30', got {config.window!r}")
        if config.stride < 1:
            raise ValueError(f"SpeechEncoderConfig.stride must be >= 1, got {config.stride}")
        if config.tune_blocks and config.projector == "mlp":
            raise ValueError("SpeechEncoderConfig.tune_blocks needs the ctc projector")
        check_decode(config, config.decode)
        self.config = config
        self.whisper = whisper_encoder
        self.whisper.requires_grad_(False)
        self.whisper.eval()
        self.n_mels = whisper_encoder.conv1.in_channels
        self.projector = build_projector(config, whisper_encoder, ctc_vocab, pieces)
        # the frozen blocks: the rest run inside the projector, trained
        self.frozen_blocks = len(whisper_encoder.blocks) - config.tune_blocks

    @classmethod
    def from_whisper(cls, config: SpeechEncoderConfig, ctc_vocab: torch.Tensor | None = None,
                     pieces: str | None = None) -> SpeechEncoder:
        from deeptalk_common.whisper_ckpt import load_whisper

        model = load_whisper(config.whisper)
        return cls(model.encoder, config, ctc_vocab, pieces)

    @property
    def reads_as_text(self) -> bool:
        """Its positions are text embeddings: the LLM reads them on its text path."""
        return self.config.projector in TEXT_PROJECTORS

    def tie(self, embedding_weight: torch.Tensor, tokenizer=None) -> SpeechEncoder:
        """Give a CTC projector the LLM's input embeddings and tokenizer (a no-op for the MLP projector)."""
        if self.reads_as_text:
            self.projector.tie(embedding_weight, tokenizer)
        return self

    def train(self, mode: bool = True):  # the Whisper half never leaves eval mode
        super().train(mode)
        self.whisper.eval()
        return self

    # -- Whisper features ---------------------------------------------------------
    def mel(self, audio: PreparedAudio) -> torch.Tensor:
        """Log-mel [n_mels, 2 * num_frames] ("exact") or [n_mels, 3000] ("pad30")."""
        import whisper

        x = torch.from_numpy(audio.samples)
        if self.config.window == "pad30":
            m = whisper.log_mel_spectrogram(x, self.n_mels, padding=whisper.audio.N_SAMPLES)
            return whisper.pad_or_trim(m, whisper.audio.N_FRAMES)
        # 1600 zero samples reach past the last STFT window, so these frames equal the
        # first frames of the "pad30" mel exactly (same per-utterance max normalisation).
        m = whisper.log_mel_spectrogram(x, self.n_mels, padding=1600)
        return m[:, : 2 * audio.num_frames]

    @property
    def features_name(self) -> str:
        """What whisper_features returns, for cache file names."""
        tail = f"-b{self.frozen_blocks}" if self.config.tune_blocks else ""
        return f"{self.config.whisper}-{self.config.window}{tail}"

    @torch.no_grad()
    def whisper_features(self, audio: PreparedAudio) -> torch.Tensor:
        """The frozen Whisper encoder's output [num_frames, d] for one utterance (50 Hz): the
        final features, or with `tune_blocks` those after the frozen blocks (no final norm)."""
        enc = self.whisper
        mel = self.mel(audio).to(enc.conv1.weight.dtype).unsqueeze(0)
        if self.config.window == "pad30" and not self.config.tune_blocks:
            return enc(mel)[0, : audio.num_frames]
        x = nn.functional.gelu(enc.conv1(mel))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.positional_embedding[: x.shape[1]].to(x.dtype)
        for block in enc.blocks[: self.frozen_blocks]:
            x = block(x)
        if self.config.tune_blocks:
            return x[0, : audio.num_frames]
        return enc.ln_post(x)[0, : audio.num_frames]

    # -- projector ----------------------------------------------------------------
    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Whisper features (a list of [T_i, d]) -> (embeds [B, P, H] right-padded, lengths [B])."""
        t_max = max(f.shape[0] for f in feats)
        batch = torch.zeros(len(feats), t_max, feats[0].shape[1], dtype=feats[0].dtype)
        for i, f in enumerate(feats):
            batch[i, : f.shape[0]] = f
        w = self.projector.fc1.weight
        batch = batch.to(device=w.device, dtype=w.dtype)
        if self.reads_as_text:
            rows = self.projector(batch, torch.tensor([f.shape[0] for f in feats]))
            lengths = torch.tensor([r.shape[0] for r in rows])
            out = batch.new_zeros(len(rows), int(lengths.max()) if len(rows) else 0, self.config.hidden_size)
            for i, r in enumerate(rows):
                out[i, : r.shape[0]] = r
            return out, lengths
        lengths = torch.tensor([num_positions(f.shape[0], self.config.stride) for f in feats])
        return self.projector(batch), lengths

    def encode(self, samples, sample_rate: int, name: str = "audio") -> tuple[torch.Tensor, PreparedAudio]:
        """One waveform -> (LLM input embeddings [P, H], what prepare_audio did)."""
        embeds, audio, _ = self.encode_heard(samples, sample_rate, name)
        return embeds, audio

    def encode_heard(self, samples, sample_rate: int, name: str = "audio"):
        """encode() plus what a CTC projector heard (its greedy LLM token ids; None for the MLP
        projector), from the same pass."""
        audio = prepare_audio(samples, sample_rate, name)
        feats = self.whisper_features(audio)
        if self.reads_as_text:
            w = self.projector.fc1.weight
            rows, heard = self.projector.read(feats.unsqueeze(0).to(device=w.device, dtype=w.dtype))
            return rows[0], audio, heard[0]
        embeds, lengths = self([feats])
        return embeds[0, : int(lengths[0])], audio, None

    def projector_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.projector.state_dict().items()}
