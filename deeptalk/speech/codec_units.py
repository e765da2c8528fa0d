"""Semantic units: one codebook of k-means clusters over the Whisper encoder's features.

Encoding runs the frozen Whisper encoder the model already hears with (tiny.en, 50 Hz),
averages `pool` frames (25 Hz at pool 2, 12.5 Hz at pool 4) and takes the nearest of K
centroids: one token stream whose units follow phonetic content more than the voice,
the kind of target a small LLM learns fastest (docs/design.md §6).

Decoding turns units into the log-mel of the voice the model speaks with (Piper joe) and
vocodes with Griffin-Lim. Two decoders: a unit decoder (unit_decoder.py: a conv net over
the units themselves, trained on hours of that voice by `deeptalk-units train-decoder`), or, in a
file without one, each unit's mean log-mel frames (a table) made smoother by a MelRefiner
(the offline codec's conv net trained on (looked-up, real) pairs). Log-mel runs at
16 kHz with hop 160 (100 Hz), so one unit is exactly 2 * pool frames.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from deeptalk.speech.codec import CodecError
from deeptalk.speech.codec_offline import LogMelCodec, nearest
from deeptalk.speech.vocoder import MelConfig

UNIT_MEL = MelConfig(sample_rate=16000, n_fft=1024, hop_length=160, n_mels=80, fmin=0.0, fmax=8000.0)
WHISPER_FRAMES_PER_S = 50


class UnitCodec(LogMelCodec):
    name = "units"

    def __init__(self, centroids: np.ndarray, unit_mel: np.ndarray, mel_mean: np.ndarray, mel_std: np.ndarray,
                 pool: int, whisper: str = "tiny.en", mel: MelConfig = UNIT_MEL, gl_iters: int = 32,
                 refiner=None, refine: bool = True, manifest: dict | None = None, decoder=None, pre=None):
        # [K, D]: Whisper feature space (k-means), or with `pre` (a units_vq.UnitPre: supervised
        # units) unit vectors in its code space, matched by cosine
        self.centroids = torch.as_tensor(np.asarray(centroids, np.float32))
        self.pre = pre.eval() if pre is not None else None
        self.unit_mel = np.asarray(unit_mel, np.float32)                           # [K, stack * n_mels] normalised
        self.pool, self.whisper_name, self.mel_cfg = int(pool), whisper, mel
        self.stack = self.pool * mel.sample_rate // (WHISPER_FRAMES_PER_S * mel.hop_length)
        if self.stack * mel.hop_length * WHISPER_FRAMES_PER_S != self.pool * mel.sample_rate:
            raise CodecError(f"units codec: a unit ({self.pool} Whisper frames) must be a whole number of "
                             f"mel frames (hop {mel.hop_length} at {mel.sample_rate} Hz)")
        if self.unit_mel.shape != (len(self.centroids), self.stack * mel.n_mels):
            raise CodecError(f"units codec: unit_mel must be [{len(self.centroids)}, {self.stack * mel.n_mels}], "
                             f"got {self.unit_mel.shape}")
        self.mel_mean = np.asarray(mel_mean, np.float32).reshape(-1, 1)
        self.mel_std = np.asarray(mel_std, np.float32).reshape(-1, 1)
        self.num_codebooks, self.codebook_size = 1, len(self.centroids)
        self.sample_rate = mel.sample_rate
        self.samples_per_frame = mel.hop_length * self.stack
        self.frame_rate = self.sample_rate / self.samples_per_frame
        self.gl_iters, self.gl_power = int(gl_iters), 1.0
        self.refiner, self.refine = refiner, bool(refine) and refiner is not None
        self.decoder = decoder if refine else None     # refine=False: the table look-up alone
        self.manifest = manifest or {}
        self._encoder = self._vocoder = None     # built on first use

    # --- encoding: Whisper features -> units ------------------------------------------
    @property
    def encoder(self):
        if self._encoder is None:
            from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig
            from deeptalk_common.whisper_ckpt import load_whisper

            # the projector is unused here: SpeechEncoder owns the exact-window Whisper features
            self._encoder = SpeechEncoder(load_whisper(self.whisper_name).encoder,
                                          SpeechEncoderConfig(whisper=self.whisper_name, hidden_size=1))
        return self._encoder

    def pooled_features(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """Whisper encoder features averaged over `pool` frames: [T, D], T = ceil(frames / pool)."""
        from deeptalk.speech.encoder import prepare_audio
        from deeptalk.speech.units_vq import pool_frames

        audio = prepare_audio(self.check_wav(wav, sr), sr)
        feats = self.encoder.whisper_features(audio).float()                 # [frames, D] at 50 Hz
        return pool_frames(feats, self.pool).numpy()

    def quantize(self, features: np.ndarray) -> np.ndarray:
        if self.pre is not None:
            with torch.no_grad():
                z = self.pre(torch.as_tensor(features, dtype=torch.float32))
            return (z @ self.centroids.T).argmax(-1).numpy()[None].astype(np.int64)
        return nearest(torch.as_tensor(features, dtype=torch.float32), self.centroids).numpy()[None].astype(np.int64)

    def encode(self, wav: np.ndarray, sr: int) -> np.ndarray:
        return self.quantize(self.pooled_features(wav, sr))

    # --- decoding (LogMelCodec): units -> looked-up log-mel -> refiner -> Griffin-Lim --
    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        """Each unit's mean normalised log-mel vector: [T, stack * n_mels]."""
        return self.unit_mel[self.check_codes(codes)[0]]

    def codes_to_log_mel(self, codes: np.ndarray) -> np.ndarray:
        if self.decoder is None:
            return super().codes_to_log_mel(codes)
        return self.decoder.decode(self.check_codes(codes)[0]) * self.mel_std + self.mel_mean

    @property
    def stream_context(self) -> tuple[int, int]:
        """(left context, lookahead) in units that a streaming decode needs to equal the full decode."""
        if self.decoder is None:
            return super().stream_context
        return self.decoder.cfg.left_context, self.decoder.cfg.lookahead

    def describe(self) -> dict:
        return {**super().describe(), "pool": self.pool, "whisper": self.whisper_name, "stack": self.stack,
                "mel": self.mel_cfg.to_dict(), **self.vocoder.describe(),
                "refiner": self.refiner.cfg.to_dict() if self.refine else None,
                "decoder": self.decoder.cfg.to_dict() if self.decoder is not None else None,
                "file_sha256": self.manifest.get("file_sha256")}

    # --- files ----------------------------------------------------------------------
    def save(self, path: str | Path, manifest: dict | None = None) -> Path:
        from deeptalk.speech.mel_refiner import state_to_tensors

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {"pool": self.pool, "whisper": self.whisper_name, "mel": self.mel_cfg.to_dict(),
                  "gl_iters": self.gl_iters}
        tensors = {"centroids": self.centroids.contiguous(), "unit_mel": torch.from_numpy(self.unit_mel),
                   "mel_mean": torch.from_numpy(self.mel_mean.reshape(-1)).contiguous(),
                   "mel_std": torch.from_numpy(self.mel_std.reshape(-1)).contiguous()}
        metadata = {"units": json.dumps(config)}
        if self.pre is not None:
            tensors.update({"pre." + k: v.detach().contiguous() for k, v in self.pre.state_dict().items()})
            metadata["pre"] = json.dumps({"d_in": self.pre.down.in_features, "code_dim": self.pre.down.out_features})
        if self.refiner is not None:
            tensors.update(state_to_tensors(self.refiner))
            metadata["refiner"] = json.dumps(self.refiner.cfg.to_dict())
        if self.decoder is not None:
            from deeptalk.speech.unit_decoder import state_to_tensors as decoder_tensors

            tensors.update(decoder_tensors(self.decoder))
            metadata["decoder"] = json.dumps(self.decoder.cfg.to_dict())
        save_file(tensors, str(path), metadata=metadata)
        full = {**(manifest or self.manifest), **config, "frame_rate": self.frame_rate, "num_codebooks": 1,
                "codebook_size": self.codebook_size, "sample_rate": self.sample_rate, "file": path.name,
                "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        path.with_suffix(".json").write_text(json.dumps(full, indent=2) + "\n")
        self.manifest = full
        return path

    @classmethod
    def load(cls, path: str | Path, **overrides) -> UnitCodec:
        """`overrides`: gl_iters, refine (False decodes the table look-up without the refiner)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"units codec file not found: {path} (fit one with `deeptalk-codec fit-units`)")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "units" not in meta:
            raise CodecError(f"{path}: not a units codec file (no 'units' metadata)")
        unknown = set(overrides) - {"gl_iters", "refine"}
        if unknown:
            raise TypeError(f"unknown units codec option(s): {sorted(unknown)}")
        config, t = json.loads(meta["units"]), load_file(str(path))
        refiner = None
        if "refiner" in meta:
            from deeptalk.speech.mel_refiner import from_tensors

            refiner = from_tensors(t, json.loads(meta["refiner"]))
        decoder = None
        if "decoder" in meta:
            from deeptalk.speech.unit_decoder import from_tensors as decoder_from_tensors

            decoder = decoder_from_tensors(t, json.loads(meta["decoder"]))
        pre = None
        if "pre" in meta:
            from deeptalk.speech.units_vq import UnitPre

            pre = UnitPre(**json.loads(meta["pre"]))
            pre.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("pre.")})
        manifest_path = path.with_suffix(".json")
        return cls(t["centroids"].numpy(), t["unit_mel"].numpy(), t["mel_mean"].numpy(), t["mel_std"].numpy(),
                   pool=config["pool"], whisper=config["whisper"], mel=MelConfig(**config["mel"]),
                   gl_iters=overrides.get("gl_iters", config.get("gl_iters", 32)), refiner=refiner,
                   refine=overrides.get("refine", True), decoder=decoder, pre=pre,
                   manifest=json.loads(manifest_path.read_text()) if manifest_path.is_file() else {})


def is_units_file(path: str | Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return "units" in (f.metadata() or {})


def unit_mel_table(codes: list[np.ndarray], mels: list[np.ndarray], k: int) -> np.ndarray:
    """Mean normalised log-mel vector of each unit over aligned (units [T], mel vectors [T, F]) pairs;
    a unit never seen gets the overall mean."""
    dim = mels[0].shape[1]
    total, count = np.zeros((k, dim), np.float64), np.zeros(k, np.int64)
    for c, m in zip(codes, mels):
        n = min(len(c), len(m))
        np.add.at(total, c[:n], m[:n])
        np.add.at(count, c[:n], 1)
    overall = total.sum(0) / max(1, count.sum())
    return np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], overall).astype(np.float32)
