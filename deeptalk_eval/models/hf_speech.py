"""What the adapters on transformers' own speech classes share (`qwen_omni`, `moshi`).

- `resolve_device_dtype`: `device=auto` is CUDA when there is one, else CPU; `dtype=auto`
  is bfloat16 on CUDA and float32 on CPU.
- `resample`: input audio at any rate to the rate a model's feature extractor expects
  (`scipy.signal.resample_poly`, as the harness's ASR and the reference encoder do).
- `load_processor`: the checkpoint's processor; where torchvision is missing (transformers'
  video processors need it, speech and text do not) the processor is rebuilt from its parts
  with a stand-in that refuses video.
- `checkpoint_digest`: what identifies a checkpoint's weights for the response cache.
- `nonstreaming_events`: the stream of a model whose transformers API returns the whole
  answer at once: every piece is stamped when `generate` returned, nothing earlier.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deeptalk_eval.api import Audio, StreamEvent, UnsupportedRequest
from deeptalk_eval.errors import UsageError

SAMPLE_BYTES = 1 << 20  # bytes read from each end of a weight file for its digest


def resolve_device_dtype(device: str, dtype: str):
    """(torch.device, torch.dtype) for the `device=` / `dtype=` model args."""
    import torch

    from deeptalk_common.dtypes import torch_dtype

    device = str(device or "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UsageError(f"model arg device={device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"model arg device={device!r}: this machine has no CUDA device (use device=cpu)")
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    try:
        return dev, torch_dtype(dtype, "model arg dtype")
    except ValueError as e:
        raise UsageError(f"{e} or auto") from None


def resample(audio: Audio, rate: int, where: str) -> np.ndarray:
    """Mono float32 samples at `rate`; empty or non-finite audio is refused for this request."""
    x = np.asarray(audio.samples, dtype=np.float32).reshape(-1)
    if x.size == 0:
        raise UnsupportedRequest(f"{where}: empty audio (0 samples)")
    if not np.isfinite(x).all():
        raise UnsupportedRequest(f"{where}: audio contains NaN or inf")
    if audio.sample_rate <= 0:
        raise UnsupportedRequest(f"{where}: invalid sample rate {audio.sample_rate}")
    if audio.sample_rate != rate:
        from scipy.signal import resample_poly

        g = math.gcd(int(rate), int(audio.sample_rate))
        x = resample_poly(x, int(rate) // g, int(audio.sample_rate) // g).astype(np.float32)
        if x.size == 0:
            raise UnsupportedRequest(f"{where}: too short to resample ({audio.samples.size} samples "
                                     f"at {audio.sample_rate} Hz)")
    return np.ascontiguousarray(x)


def load_errors() -> tuple[type[BaseException], ...]:
    """What `from_pretrained` raises for a path that is not there (no folder, no such hub id,
    offline without a cached copy): the user's mistake, not a bug."""
    errors: tuple[type[BaseException], ...] = (OSError,)
    try:
        from huggingface_hub.errors import HFValidationError

        errors += (HFValidationError,)
    except ImportError:
        pass
    return errors


def load_failure(model: str, path: str, error: BaseException) -> UsageError:
    """The one line a user sees when a checkpoint cannot be loaded."""
    import os

    hint = ""
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not Path(path).exists():
        hint = " (the run is offline: add --online to download it, or give a local folder)"
    return UsageError(f"{model}: cannot load {path!r}: {error}{hint}")


def check_path(path: str, model: str) -> None:
    """A local-looking path that does not exist is named at once (not sent to the hub)."""
    p = Path(path).expanduser()
    if not p.exists() and (p.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1):
        raise UsageError(f"{model}: model arg path={path!r}: no such folder (give a local checkpoint folder "
                         "or a hub id such as owner/name)")


# -- processors -----------------------------------------------------------------------------


def _video_standin(path: str, **kw: Any):
    """A video processor that takes no video: enough for the processor's text/audio path,
    which reads only its merge size (from the checkpoint's video or image config)."""
    from transformers.video_processing_utils import BaseVideoProcessor

    class VideoNotAvailable(BaseVideoProcessor):
        def __call__(self, *args, **kwargs):
            raise UnsupportedRequest("video input needs torchvision, which is not installed")

    cfg: dict[str, Any] = {}
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        try:
            from transformers.utils import cached_file

            f = cached_file(path, name, _raise_exceptions_for_missing_entries=False, **kw)
        except OSError:
            f = None
        if f:
            cfg = json.loads(Path(f).read_text())
            if "merge_size" in cfg:
                break
    vp = VideoNotAvailable()
    vp.merge_size = int(cfg.get("merge_size", 2))
    vp.temporal_patch_size = int(cfg.get("temporal_patch_size", 2))
    return vp


def load_processor(processor_cls: type, path: str, trust_remote_code: bool = False) -> tuple[Any, str | None]:
    """(processor, note): the checkpoint's processor of class `processor_cls`; note is None,
    or says that its video part is a stand-in because torchvision is missing."""
    kw = {"trust_remote_code": trust_remote_code}
    try:
        return processor_cls.from_pretrained(path, **kw), None
    except ImportError as e:
        if "torchvision" not in str(e).lower():
            raise
    # Rebuild from the parts, as ProcessorMixin.from_pretrained does, without torchvision.
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

    class WithoutVideo(processor_cls):
        def check_argument_for_proper_class(self, name, arg):
            if name == "video_processor":
                return type(arg)
            return super().check_argument_for_proper_class(name, arg)

    WithoutVideo.__name__ = processor_cls.__name__
    loaders = {"tokenizer": lambda: AutoTokenizer.from_pretrained(path, **kw),
               "feature_extractor": lambda: AutoFeatureExtractor.from_pretrained(path, **kw),
               "image_processor": lambda: AutoImageProcessor.from_pretrained(path, use_fast=False, **kw),
               "video_processor": lambda: _video_standin(path)}
    unknown = [a for a in processor_cls.attributes if a not in loaders]
    if unknown:
        raise UsageError(f"{processor_cls.__name__} has parts {unknown} that cannot load without torchvision; "
                         "install torchvision")
    args = [loaders[a]() for a in processor_cls.attributes]
    processor_dict, _ = processor_cls.get_processor_dict(path, **kw)
    processor = WithoutVideo.from_args_and_dict(args, processor_dict)
    return processor, "video processor replaced by a stand-in that refuses video (torchvision not installed)"


# -- identity ---------------------------------------------------------------------------------


def checkpoint_dir(path: str) -> Path | None:
    """The local folder of a checkpoint: the path itself, or a hub id's cached snapshot."""
    p = Path(path)
    if p.is_dir():
        return p.resolve()
    try:
        from huggingface_hub import try_to_load_from_cache

        f = try_to_load_from_cache(path, "config.json")
    except Exception:  # not a hub id either
        return None
    return Path(f).parent if isinstance(f, str) else None


def checkpoint_digest(path: str) -> str:
    """sha256 over the checkpoint's config files (whole) and weight files (name, size, and the
    first and last MiB of each): cheap for a 60 GB checkpoint, and any retrained or
    re-quantised weights change it. A hub snapshot's folder name (its commit) is included."""
    folder = checkpoint_dir(path)
    if folder is None:
        return hashlib.sha256(f"unresolved:{path}".encode()).hexdigest()
    h = hashlib.sha256(folder.name.encode() if "snapshots" in folder.parts else b"")
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        if f.suffix in (".json", ".jinja", ".txt", ".model"):
            h.update(f"{f.name}|".encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
        elif f.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            size = f.stat().st_size
            h.update(f"{f.name}:{size}|".encode())
            with f.open("rb") as fh:
                h.update(fh.read(SAMPLE_BYTES))
                if size > 2 * SAMPLE_BYTES:
                    fh.seek(size - SAMPLE_BYTES)
                    h.update(fh.read())
    return h.hexdigest()


def args_digest(args: dict[str, Any], skip: tuple[str, ...] = ("device", "loglikelihood_batch_size")) -> str:
    """The model args that may change answers (not where or in what batches it runs), hashed."""
    kept = {k: v for k, v in sorted(args.items()) if k not in skip}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- timing -----------------------------------------------------------------------------------


def nonstreaming_events(text: str | None, audio: Audio | None, t_done: float,
                        marks: dict[str, float] | None = None,
                        info: dict[str, Any] | None = None) -> Iterator[StreamEvent]:
    """The events of an answer that arrived whole at `t_done` (the moment `generate` returned):
    marks at their own times, then the text, the audio and the end (carrying `info`), all
    stamped `t_done`. The first audio of such a model is its whole answer."""
    for name, t in (marks or {}).items():
        yield StreamEvent("mark", t, name=name)
    if text:
        yield StreamEvent("text", t_done, text=text)
    if audio is not None and audio.samples.size:
        yield StreamEvent("audio", t_done, audio=audio)
    yield StreamEvent("end", time.monotonic(), info=dict(info or {}))
