"""A small learned post-filter for the offline codec: quantised log-mel -> closer to the exact one.

Residual k-means codes each position (4 stacked mel frames) on its own, greedily stage by
stage; the sum of centroids is not the best guess of the frames given all the codes
and their neighbours. This net makes that guess: a residual 1-D conv net over time, in
the codec's normalised log-mel space, trained on (quantised, exact) pairs of the fit
speech. It changes only decoding: the codes, and so every model trained on them, stay
the same.

Its convolutions look mostly back (each block sees `right` frames ahead, the input and
output convs none), so the whole net looks `right_context` = 4 frames ahead: the
streaming decoder's lookahead (1 position = 4 frames) covers that, and its left context
(8 positions) covers the 20 frames it looks back.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class RefinerConfig:
    n_mels: int = 80
    stack: int = 4            # frames per codec position: the frame's place in it is an input
    channels: int = 192
    blocks: int = 4
    kernel: int = 5
    right: int = 1            # frames each block sees ahead (the rest of its kernel looks back)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def right_context(self) -> int:
        """Frames ahead the net looks at: only the blocks look ahead (input and output convs are causal)."""
        return self.right * self.blocks

    @property
    def left_context(self) -> int:
        return (self.kernel - 1 - self.right) * self.blocks + 2 * (self.kernel - 1)


class _Conv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, right: int):
        super().__init__()
        self.pad = (kernel - 1 - right, right)
        self.conv = nn.Conv1d(cin, cout, kernel)

    def forward(self, x):
        return self.conv(nn.functional.pad(x, self.pad, mode="replicate"))


class MelRefiner(nn.Module):
    """[B, n_mels, T] normalised quantised log-mel -> [B, n_mels, T] refined (input + correction)."""

    def __init__(self, cfg: RefinerConfig = RefinerConfig()):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.inp = _Conv(cfg.n_mels + cfg.stack, c, cfg.kernel, 0)
        self.blocks = nn.ModuleList(_Conv(c, c, cfg.kernel, cfg.right) for _ in range(cfg.blocks))
        self.out = _Conv(c, cfg.n_mels, cfg.kernel, 0)
        nn.init.zeros_(self.out.conv.weight)   # starts as the identity: never worse than no refiner
        nn.init.zeros_(self.out.conv.bias)

    def phase(self, n_frames: int) -> torch.Tensor:
        """One-hot place of each frame inside its codec position [stack, T] (frame 0 starts one)."""
        idx = torch.arange(n_frames) % self.cfg.stack
        return nn.functional.one_hot(idx, self.cfg.stack).T.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = self.phase(x.shape[-1]).to(x).expand(x.shape[0], -1, -1)
        h = nn.functional.gelu(self.inp(torch.cat([x, ph], dim=1)))
        for block in self.blocks:
            h = h + nn.functional.gelu(block(h))
        return x + self.out(h)

    @torch.inference_mode()
    def refine(self, mel: np.ndarray) -> np.ndarray:
        """[n_mels, T] normalised log-mel (T a whole number of positions) -> refined, float32."""
        if mel.shape[1] == 0:
            return mel
        return self(torch.from_numpy(np.ascontiguousarray(mel, np.float32))[None])[0].numpy()


def training_pairs(exact: np.ndarray, quantised: np.ndarray, lengths, stack: int, n_mels: int,
                   crop: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Frame-major tensors [N_frames, n_mels] and the start frames of crops that stay inside
    one utterance (`lengths` in positions; None: the vectors are one long run)."""
    x = torch.from_numpy(np.ascontiguousarray(exact, np.float32)).reshape(-1, n_mels)
    q = torch.from_numpy(np.ascontiguousarray(quantised, np.float32)).reshape(-1, n_mels)
    lengths = [len(exact)] if lengths is None else list(lengths)
    if sum(lengths) != len(exact):
        raise ValueError(f"utterance lengths sum to {sum(lengths)} positions, the features hold {len(exact)}")
    starts, pos = [], 0
    for n in lengths:
        frames = n * stack
        if frames >= crop:    # crops start on a position boundary, as decoding does
            starts.extend(range(pos * stack, pos * stack + frames - crop + 1, stack))
        pos += n
    if not starts:
        raise ValueError(f"no utterance is {crop} frames long: lower the crop")
    return q, x, np.asarray(starts)


def train_refiner(exact: np.ndarray, quantised: np.ndarray, lengths=None, cfg: RefinerConfig = RefinerConfig(),
                  steps: int = 2000, batch: int = 32, crop: int = 128, lr: float = 2e-3, seed: int = 0,
                  val: tuple[np.ndarray, np.ndarray] | None = None, progress: bool = True,
                  max_seconds: float | None = None) -> tuple[MelRefiner, dict]:
    """Fit a MelRefiner on (quantised, exact) normalised stacked vectors [T, stack * n_mels].

    L1 loss in normalised log-mel, AdamW with cosine decay, seeded crops. `val`: a
    (quantised, exact) pair of held-out vectors whose L1 is reported before and after.
    Returns the model and a training record (losses, settings, seconds).
    """
    import time

    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    q, x, starts = training_pairs(exact, quantised, lengths, cfg.stack, cfg.n_mels, crop)
    model = MelRefiner(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    offsets = torch.arange(crop)
    losses, t0, done = [], time.time(), 0
    bar = tqdm(range(steps), desc="mel refiner", unit="step", disable=not progress, mininterval=2)
    for step in bar:
        idx = torch.from_numpy(rng.choice(starts, batch))[:, None] + offsets   # [B, crop] frames
        qb, xb = q[idx].transpose(1, 2), x[idx].transpose(1, 2)                # [B, n_mels, crop]
        loss = (model(qb) - xb).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if step % 50 == 0:
            bar.set_postfix(l1=f"{np.mean(losses[-50:]):.4f}")
        if max_seconds is not None and time.time() - t0 > max_seconds:
            break
    model.eval()
    record = {"config": cfg.to_dict(), "steps": done, "steps_planned": steps, "batch": batch, "crop_frames": crop,
              "lr": lr, "seed": seed, "loss": "L1, normalised log-mel", "optimizer": "AdamW wd 0.01, cosine",
              "train_l1_first50": float(np.mean(losses[:50])), "train_l1_last50": float(np.mean(losses[-50:])),
              "train_l1_identity": float((q - x).abs().mean()), "seconds": round(time.time() - t0, 1),
              "parameters": sum(p.numel() for p in model.parameters())}
    if val is not None:
        record["val"] = validation_l1(model, *val, cfg)
    return model, record


def validation_l1(model: MelRefiner, quantised: np.ndarray, exact: np.ndarray, cfg: RefinerConfig) -> dict:
    """L1 to the exact normalised log-mel of held-out speech, without and with the refiner."""
    q = np.ascontiguousarray(quantised, np.float32).reshape(-1, cfg.n_mels).T
    x = np.ascontiguousarray(exact, np.float32).reshape(-1, cfg.n_mels).T
    return {"l1_quantised": float(np.abs(q - x).mean()), "l1_refined": float(np.abs(model.refine(q) - x).mean()),
            "frames": int(x.shape[1])}


def state_to_tensors(model: MelRefiner, prefix: str = "refiner.") -> dict[str, torch.Tensor]:
    """fp16 weights for the codec file: half the size, held-out L1 equal to 5 digits (measured)."""
    return {prefix + k: v.detach().half().contiguous() for k, v in model.state_dict().items()}


def from_tensors(tensors: dict[str, torch.Tensor], cfg: dict, prefix: str = "refiner.") -> MelRefiner:
    model = MelRefiner(RefinerConfig(**cfg))
    state = {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
    model.load_state_dict(state)      # strict: a file from another config fails loudly
    return model.eval()
