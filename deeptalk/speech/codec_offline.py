"""The offline speech codec: residual k-means over stacked log-mel frames + Griffin-Lim.

    encode: wav -> 80-bin log-mel (22.05 kHz, hop 256) -> normalise per bin -> stack
            `stack` frames into one vector (21.5 positions/s for stack 4) -> residual
            k-means: codebook q quantises what codebooks < q left over -> codes [Q, T]
    decode: codes -> sum of centroids -> unstack -> [mel refiner] -> un-normalise -> Griffin-Lim

The optional mel refiner (mel_refiner.py) is a small conv net trained on (quantised,
exact) pairs of the fit speech; it changes decoding only, never the codes.

Fitted by `deeptalk-codec fit` on synthetic speech (codec_data.py) and shipped as one
safetensors file (codebooks + normalisation stats) with a JSON manifest beside it
(how it was fitted: data recipe, seeds, package versions, measured quality).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from deeptalk.speech.codec import CodecError, SpeechCodec
from deeptalk.speech.vocoder import GriffinLim, MelConfig, MelFrontend

ASSET_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_PATH = ASSET_DIR / "offline_codec.safetensors"


class LogMelCodec(SpeechCodec):
    """What every codec that decodes through normalised log-mel shares: the voice's log-mel
    as stacked vectors (`features`, also the unquantised ceiling), codes -> log-mel through
    the optional mel refiner, and Griffin-Lim. A subclass sets `mel_cfg`, `stack`,
    `mel_mean` / `mel_std` ([n_mels, 1]), `gl_iters`, `gl_power`, `refiner`, `refine`,
    `sample_rate`, `samples_per_frame`, `_vocoder = None`, and defines `dequantize`."""

    @property
    def vocoder(self) -> GriffinLim:
        if self._vocoder is None:   # built on first use: fitting and saving need no librosa
            self._vocoder = GriffinLim(self.mel_cfg, n_iter=self.gl_iters, power=self.gl_power)
        return self._vocoder

    @property
    def front(self) -> MelFrontend:
        return self.vocoder.front

    def features(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """Normalised stacked log-mel vectors [T, n_mels * stack], T = ceil(len / samples_per_frame)."""
        wav = self.check_wav(wav, sr)
        if sr != self.sample_rate:
            import librosa

            wav = librosa.resample(wav, orig_sr=sr, target_sr=self.sample_rate).astype(np.float32)
        pad = (-len(wav)) % self.samples_per_frame      # whole positions: T = ceil(len / spf)
        wav = np.pad(wav, (0, pad))
        mel = (self.front.log_mel(wav) - self.mel_mean) / self.mel_std   # [n_mels, T * stack]
        return stack_frames(mel, self.stack)

    def vectors_to_log_mel(self, vectors: np.ndarray) -> np.ndarray:
        """[T, n_mels * stack] normalised vectors -> log-mel [n_mels, T * stack]."""
        return unstack_frames(vectors, self.stack, self.mel_cfg.n_mels) * self.mel_std + self.mel_mean

    def codes_to_log_mel(self, codes: np.ndarray) -> np.ndarray:
        """Codes -> the log-mel the vocoder gets: dequantised, refined when a refiner is on."""
        mel = unstack_frames(self.dequantize(codes), self.stack, self.mel_cfg.n_mels)
        if self.refine:   # chunks start on a position boundary, as the refiner's frame phase assumes
            mel = self.refiner.refine(mel)
        return mel * self.mel_std + self.mel_mean

    def vocode(self, log_mel: np.ndarray, frame_offset: int = 0) -> np.ndarray:
        """Log-mel -> waveform; `frame_offset` is in positions (as in `decode`)."""
        return self.vocoder(log_mel, frame_offset=frame_offset * self.stack)

    def decode(self, codes: np.ndarray, *, frame_offset: int = 0) -> np.ndarray:
        return self.vocode(self.codes_to_log_mel(codes), frame_offset=frame_offset)


class OfflineCodec(LogMelCodec):
    name = "offline"

    def __init__(self, codebooks: np.ndarray, mel_mean: np.ndarray, mel_std: np.ndarray,
                 stack: int, mel: MelConfig = MelConfig(), gl_iters: int = 32, gl_power: float = 1.0,
                 manifest: dict | None = None, projection: np.ndarray | None = None,
                 refiner=None, refine: bool = True):
        codebooks = np.asarray(codebooks, dtype=np.float32)
        dim = mel.n_mels * stack
        # optional PCA: quantise the top principal directions of the stacked vectors only
        self.projection = None if projection is None else torch.from_numpy(np.asarray(projection, np.float32))
        if self.projection is not None and (self.projection.ndim != 2 or self.projection.shape[0] != dim):
            raise CodecError(f"projection must be [{dim}, d], got {tuple(self.projection.shape)}")
        qdim = dim if self.projection is None else self.projection.shape[1]
        if codebooks.ndim != 3 or codebooks.shape[2] != qdim:
            raise CodecError(f"codebooks must be [Q, K, {qdim}], got {codebooks.shape}")
        self.codebooks = torch.from_numpy(codebooks)                     # [Q, K, qdim]
        self.mel_mean = np.asarray(mel_mean, dtype=np.float32).reshape(-1, 1)
        self.mel_std = np.asarray(mel_std, dtype=np.float32).reshape(-1, 1)
        self.stack, self.mel_cfg = int(stack), mel
        self.num_codebooks, self.codebook_size = codebooks.shape[0], codebooks.shape[1]
        self.sample_rate = mel.sample_rate
        self.samples_per_frame = mel.hop_length * self.stack
        self.frame_rate = self.sample_rate / self.samples_per_frame
        self.gl_iters, self.gl_power = int(gl_iters), float(gl_power)
        self._vocoder = None       # built on first use: fitting and saving need no librosa
        self.manifest = manifest or {}
        if refiner is not None and (refiner.cfg.n_mels != mel.n_mels or refiner.cfg.stack != self.stack):
            raise CodecError(f"refiner is for {refiner.cfg.n_mels} mels x stack {refiner.cfg.stack}, "
                             f"the codec has {mel.n_mels} x {self.stack}")
        self.refiner = refiner     # a MelRefiner or None
        self.refine = bool(refine) and refiner is not None

    # --- codec ---------------------------------------------------------------------
    def quantize(self, vectors: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(vectors, dtype=torch.float32)
        if self.projection is not None:
            x = x @ self.projection
        codes = []
        for cb in self.codebooks:                        # residual: each stage codes what is left
            idx = nearest(x, cb)
            codes.append(idx)
            x = x - cb[idx]
        return torch.stack(codes).numpy().astype(np.int64) if codes else np.zeros((0, len(x)), np.int64)

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        codes = torch.as_tensor(self.check_codes(codes))
        out = torch.zeros(codes.shape[1], self.codebooks.shape[2])
        for q in range(self.num_codebooks):
            out += self.codebooks[q][codes[q]]
        if self.projection is not None:
            out = out @ self.projection.T
        return out.numpy()

    def encode(self, wav: np.ndarray, sr: int) -> np.ndarray:
        return self.quantize(self.features(wav, sr))

    def describe(self) -> dict:
        return {**super().describe(), "stack": self.stack, "mel": self.mel_cfg.to_dict(),
                **self.vocoder.describe(), "file_sha256": self.manifest.get("file_sha256"),
                "refiner": self.refiner.cfg.to_dict() if self.refine else None}

    # --- files ---------------------------------------------------------------------
    def save(self, path: str | Path, manifest: dict | None = None) -> Path:
        """Write the safetensors file and its JSON manifest (same name, .json)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {"stack": self.stack, "mel": self.mel_cfg.to_dict(), "gl_iters": self.gl_iters,
                  "gl_power": self.gl_power}
        # fp16 codebooks halve the file; the rounding is far below the quantisation error
        tensors = {"codebooks": self.codebooks.half().contiguous(),
                   "mel_mean": torch.from_numpy(self.mel_mean.reshape(-1)).contiguous(),
                   "mel_std": torch.from_numpy(self.mel_std.reshape(-1)).contiguous()}
        if self.projection is not None:
            tensors["projection"] = self.projection.contiguous()
        metadata = {"config": json.dumps(config)}
        if self.refiner is not None:
            from deeptalk.speech.mel_refiner import state_to_tensors

            tensors.update(state_to_tensors(self.refiner))
            metadata["refiner"] = json.dumps(self.refiner.cfg.to_dict())
        save_file(tensors, str(path), metadata=metadata)
        import hashlib

        full = {**(manifest or self.manifest), **config,
                "frame_rate": self.frame_rate, "num_codebooks": self.num_codebooks,
                "codebook_size": self.codebook_size, "sample_rate": self.sample_rate,
                "file": path.name, "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        path.with_suffix(".json").write_text(json.dumps(full, indent=2) + "\n")
        self.manifest = full
        return path

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides) -> OfflineCodec:
        """Load a codec file (default: the shipped one). `overrides`: gl_iters, gl_power,
        refine (False decodes without the file's mel refiner)."""
        path = Path(path) if path is not None else DEFAULT_PATH
        if path.is_dir():
            path = path / DEFAULT_PATH.name
        if not path.is_file():
            raise FileNotFoundError(f"offline codec file not found: {path} (fit one with `deeptalk-codec fit`)")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        config = json.loads(meta.get("config", "{}"))
        if "stack" not in config:
            raise CodecError(f"{path}: not an offline codec file (no 'config' metadata)")
        t = load_file(str(path))
        manifest_path = path.with_suffix(".json")
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        unknown = set(overrides) - {"gl_iters", "gl_power", "refine"}
        if unknown:
            raise TypeError(f"unknown offline codec option(s): {sorted(unknown)}")
        refiner = None
        if "refiner" in meta:
            from deeptalk.speech.mel_refiner import from_tensors

            refiner = from_tensors(t, json.loads(meta["refiner"]))
        return cls(t["codebooks"].float().numpy(), t["mel_mean"].numpy(), t["mel_std"].numpy(),
                   stack=config["stack"], mel=MelConfig(**config["mel"]),
                   gl_iters=overrides.get("gl_iters", config.get("gl_iters", 32)),
                   gl_power=overrides.get("gl_power", config.get("gl_power", 1.0)), manifest=manifest,
                   projection=t["projection"].numpy() if "projection" in t else None,
                   refiner=refiner, refine=overrides.get("refine", True))


def stack_frames(mel: np.ndarray, stack: int) -> np.ndarray:
    """[n_mels, T * stack] -> [T, stack * n_mels] (frame-major inside a vector)."""
    n_mels, n = mel.shape
    if n % stack:
        raise CodecError(f"{n} mel frames is not a multiple of the stack {stack}")
    return np.ascontiguousarray(mel.T.reshape(n // stack, stack * n_mels))


def unstack_frames(vectors: np.ndarray, stack: int, n_mels: int) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(vectors).reshape(-1, n_mels).T)


def nearest(x: torch.Tensor, centroids: torch.Tensor, batch: int = 65536) -> torch.Tensor:
    """Index of the nearest centroid (squared L2) for every row of x."""
    c_sq = (centroids ** 2).sum(1)
    out = []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        out.append((c_sq[None, :] - 2 * xb @ centroids.T).argmin(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def pca_projection(x: np.ndarray, dims: int) -> np.ndarray:
    """[D, dims] orthonormal top principal directions (of the second moment: x is z-scored)."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    evals, evecs = torch.linalg.eigh(xt.T @ xt / len(xt))
    return evecs[:, torch.argsort(evals, descending=True)[:dims]].contiguous().numpy()


def fit_residual_kmeans(x: np.ndarray, num_codebooks: int, codebook_size: int, seed: int = 0,
                        impl: str = "sklearn", device: str = "cpu", progress: bool = True) -> np.ndarray:
    """Residual k-means codebooks [Q, K, D]: stage q clusters what stages < q left over.

    impl "sklearn": MiniBatchKMeans (batch 4096, 30 epochs) on the CPU; impl "torch":
    full-batch Lloyd (k-means++ start, 50 iterations) on `device`, for a GPU when one is at hand.
    """
    from tqdm import tqdm

    if len(x) < codebook_size:
        raise ValueError(f"{len(x)} training vectors cannot fit {codebook_size} centroids")
    if impl not in ("sklearn", "torch"):
        raise ValueError(f"unknown k-means impl {impl!r}: sklearn or torch")
    residual = torch.tensor(np.asarray(x, dtype=np.float32), device=device)   # a copy: x stays intact
    books = []
    for q in tqdm(range(num_codebooks), desc=f"residual k-means ({impl})", disable=not progress):
        if impl == "sklearn":
            from sklearn.cluster import MiniBatchKMeans

            km = MiniBatchKMeans(n_clusters=codebook_size, batch_size=4096, max_iter=30, n_init=1,
                                 random_state=seed + q, reassignment_ratio=0.01, max_no_improvement=5)
            km.fit(residual.cpu().numpy())
            cb = torch.from_numpy(km.cluster_centers_.astype(np.float32)).to(device)
        else:
            cb = lloyd_kmeans(residual, codebook_size, seed=seed + q)
        residual -= cb[nearest(residual, cb)]
        books.append(cb.cpu().numpy())
    return np.stack(books)


def lloyd_kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50) -> torch.Tensor:
    """Plain k-means in torch: k-means++ start on a sample, then Lloyd steps; empty clusters
    are re-seeded from the points worst served."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    sample = x[torch.randperm(len(x), generator=g)[: min(len(x), 50 * k)].to(x.device)]
    centroids = sample[torch.randint(len(sample), (1,), generator=g).to(x.device)]
    d2 = ((sample - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):                                  # k-means++: far points more likely
        probs = (d2 / d2.sum()).cpu()
        nxt = sample[torch.multinomial(probs, 1, generator=g).to(x.device)]
        centroids = torch.cat([centroids, nxt])
        d2 = torch.minimum(d2, ((sample - nxt) ** 2).sum(1))
    for _ in range(iters):
        idx = nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            err = ((x - centroids[idx]) ** 2).sum(1)
            centroids[empty] = x[err.topk(int(empty.sum())).indices]
    return centroids
