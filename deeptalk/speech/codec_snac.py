"""SNAC 24 kHz behind the SpeechCodec interface, with the paper's 7-tokens-per-step layout.

SNAC quantises at three rates: codebook 0 at 12 Hz, 1 at 23 Hz, 2 at 47 Hz (strides
4, 2, 1 over its 47 Hz latent). One 12 Hz step therefore holds 1 + 2 + 4 = 7 tokens;
the paper's speech heads emit those 7 in parallel each step. We lay them out as rows:

    row 0: c0[t]   rows 1-2: c1[2t], c1[2t+1]   rows 3-6: c2[4t] .. c2[4t+3]

so a SNAC codec is a 7 x 4096 codec at 24000 / 2048 = 11.72 positions/s.

Weights are not shipped and cannot be fetched here: `SNACCodec.load(dir)` reads a
local `config.json` + `pytorch_model.bin` (loaded with weights_only) or
`model.safetensors`; with no dir it downloads `hubertsiuzdak/snac_24khz` when the hub
is reachable. Tests use a tiny randomly initialised `snac.SNAC` of the same layout.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from deeptalk.speech.codec import CodecError, SpeechCodec

HUB_ID = "hubertsiuzdak/snac_24khz"


def flatten_snac_codes(codes: list) -> np.ndarray:
    """SNAC's [c0 [1, T], c1 [1, 2T], c2 [1, 4T]] -> int64 [7, T] (one column per 12 Hz step)."""
    if len(codes) != 3:
        raise CodecError(f"expected 3 SNAC codebooks, got {len(codes)}")
    c0, c1, c2 = (np.asarray(torch.as_tensor(c).reshape(-1).cpu(), dtype=np.int64) for c in codes)
    t = len(c0)
    if len(c1) != 2 * t or len(c2) != 4 * t:
        raise CodecError(f"SNAC codebook lengths must be T, 2T, 4T; got {len(c0)}, {len(c1)}, {len(c2)}")
    return np.concatenate([c0[None], c1.reshape(t, 2).T, c2.reshape(t, 4).T], axis=0)


def unflatten_snac_codes(flat: np.ndarray) -> list[torch.Tensor]:
    """Inverse of `flatten_snac_codes`: [7, T] -> [c0 [1, T], c1 [1, 2T], c2 [1, 4T]]."""
    flat = np.asarray(flat, dtype=np.int64)
    if flat.ndim != 2 or flat.shape[0] != 7:
        raise CodecError(f"flattened SNAC codes must be [7, T], got {flat.shape}")
    c0 = flat[0]
    c1 = flat[1:3].T.reshape(-1)
    c2 = flat[3:7].T.reshape(-1)
    return [torch.from_numpy(np.ascontiguousarray(c))[None] for c in (c0, c1, c2)]


class SNACCodec(SpeechCodec):
    name = "snac"

    def __init__(self, model, source: str = "module", noise_seed: int = 0):
        if list(model.vq_strides) != [4, 2, 1]:
            raise CodecError(f"the 7-token layout needs SNAC vq_strides [4, 2, 1], got {model.vq_strides}")
        if getattr(model, "attn_window_size", None):
            # windowed attention pads inputs to a multiple of the window; chunked decoding
            # then no longer maps positions to samples one to one
            raise CodecError("SNACCodec supports the 24 kHz layout without attention windows")
        self.model = model.eval()
        self.source = source
        self.noise_seed = int(noise_seed)
        self.sample_rate = int(model.sampling_rate)
        self.samples_per_frame = int(model.hop_length) * 4
        self.frame_rate = self.sample_rate / self.samples_per_frame
        self.num_codebooks = 7
        self.codebook_size = int(model.codebook_size)

    @classmethod
    def load(cls, source: str | Path | None = None, device: str = "cpu") -> SNACCodec:
        from snac import SNAC

        if source is not None and Path(source).is_dir():
            d = Path(source)
            model = SNAC(**json.loads((d / "config.json").read_text()))
            if (d / "model.safetensors").is_file():
                from safetensors.torch import load_file

                state = load_file(str(d / "model.safetensors"))
            elif (d / "pytorch_model.bin").is_file():
                state = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
            else:
                raise FileNotFoundError(f"{d}: no model.safetensors or pytorch_model.bin")
            model.load_state_dict(state)
        else:
            hub_id = str(source or HUB_ID)
            try:
                from huggingface_hub import hf_hub_download

                cfg = hf_hub_download(hub_id, "config.json")
                weights = hf_hub_download(hub_id, "pytorch_model.bin")
            except Exception as exc:
                raise FileNotFoundError(
                    f"SNAC weights {hub_id!r} are not on disk and the hub is unreachable ({type(exc).__name__}); "
                    f"pass a local directory with config.json + pytorch_model.bin, or use the offline codec") from exc
            model = SNAC(**json.loads(Path(cfg).read_text()))
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            source = hub_id
        return cls(model.to(device), source=str(source))

    @torch.inference_mode()
    def encode(self, wav: np.ndarray, sr: int) -> np.ndarray:
        wav = self.check_wav(wav, sr)
        if sr != self.sample_rate:
            import librosa

            wav = librosa.resample(wav, orig_sr=sr, target_sr=self.sample_rate).astype(np.float32)
        x = torch.from_numpy(wav)[None, None].to(next(self.model.parameters()).device)
        return flatten_snac_codes(self.model.encode(x))

    @torch.inference_mode()
    def decode(self, codes: np.ndarray, *, frame_offset: int = 0) -> np.ndarray:
        codes = self.check_codes(codes)
        if codes.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        device = next(self.model.parameters()).device
        # SNAC's decoder adds random noise: a fixed seed per (stream position) keeps decoding
        # repeatable without touching the caller's random state
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.noise_seed + frame_offset)
            audio = self.model.decode([c.to(device) for c in unflatten_snac_codes(codes)])
        return audio.reshape(-1).float().cpu().numpy()[: codes.shape[1] * self.samples_per_frame]

    def describe(self) -> dict:
        return {**super().describe(), "source": self.source, "layout": "7 rows per 12 Hz step: c0, c1 x2, c2 x4"}
