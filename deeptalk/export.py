"""Ship a trained stage as a small checkpoint: the model as a delta over its base LLM.

    deeptalk-train --recipe reference --stages "" --output runs/reference --export checkpoints/reference

The exported directory has the layout `checkpoint.load_checkpoint` reads (tokenizer, projector,
encoder config, codec reference, stage.json, the assignment and its heatmap, loss curves)
with `delta.json` + `delta.safetensors` in place of the full weights (deeptalk/delta.py).
A size cap guards the repository: git keeps every committed version forever.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from deeptalk_common.base_llm import drop_gguf_copy
from deeptalk_common.dtypes import torch_dtype

from .checkpoint import load_checkpoint
from .delta import DELTA_TENSORS, save_delta

# everything a stage directory holds beside the model weights that a shipped model keeps
SIDE_FILES = ("speech_encoder.safetensors", "speech_encoder.json", "codec.json", "stage.json")
ASSIGNMENT_FILES = ("assignment.json", "modality_load.csv", "modality_load.png", "modality_load.safetensors")


def export_checkpoint(stage_dir, out, dtype: str = "bfloat16", max_mb: float | None = 64.0,
                      run_files: dict[str, Path] | None = None, base=None) -> dict:
    """Write `stage_dir`'s model as a delta checkpoint into `out`; returns the delta metadata.

    Raises ValueError (and leaves `out` untouched) when the delta exceeds `max_mb`.
    `run_files`: extra files to copy in under the given names (the recipe, the run summary).
    `base`: the dense base model itself, when its name cannot be loaded (a test's random base).
    """
    stored = torch_dtype(dtype, "export dtype")
    stage_dir, out = Path(stage_dir), Path(out)
    bundle = load_checkpoint(stage_dir)
    base = base if base is not None else bundle.model.config.base_model
    if base is None or base == "":
        raise ValueError(f"{stage_dir}/config.json names no base_model: cannot write a delta")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    meta = save_delta(bundle.model, tmp, base, dtype=None if stored is torch.float32 else stored, tokenizer=bundle.tokenizer)
    drop_gguf_copy(tmp)  # stage folders written before the base's cache dropped it carry it
    size_mb = (tmp / DELTA_TENSORS).stat().st_size / 2**20
    if max_mb is not None and size_mb > max_mb:
        shutil.rmtree(tmp)
        raise ValueError(f"{stage_dir}: the delta is {size_mb:.1f} MB, over the {max_mb:g} MB cap "
                         "(train fewer tensors, or raise the cap knowingly)")
    for name in SIDE_FILES:
        if (stage_dir / name).is_file():
            shutil.copy(stage_dir / name, tmp / name)
    # the run's story travels along: the modality assignment and every stage's loss curve
    run = stage_dir.parent
    for name in ASSIGNMENT_FILES:
        src = stage_dir / name if (stage_dir / name).is_file() else run / "stage-assign" / name
        if src.is_file():
            shutil.copy(src, tmp / name)
    for stage in sorted(run.glob("stage-*")):
        for ext in ("csv", "png"):
            if (stage / f"loss.{ext}").is_file():
                shutil.copy(stage / f"loss.{ext}", tmp / f"loss-{stage.name}.{ext}")
        if (stage / "hearing_curve.csv").is_file():  # a CTC stage 1 logs its dev WER, not a loss.csv
            shutil.copy(stage / "hearing_curve.csv", tmp / f"hearing-{stage.name}.csv")
    ref = json.loads((stage_dir / "codec.json").read_text())
    if "path" in ref and (stage_dir / ref["path"]).is_file():  # a fitted codec travels along
        shutil.copy(stage_dir / ref["path"], tmp / ref["path"])
    stages = {st.name: json.loads((st / "stage.json").read_text()) for st in sorted(run.glob("stage-*"))
              if (st / "stage.json").is_file()}
    (tmp / "training.json").write_text(json.dumps(stages, indent=1))
    for name, src in (run_files or {}).items():
        if Path(src).is_file():
            shutil.copy(src, tmp / name)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return {**meta, "size_mb": round(size_mb, 2), "source": str(stage_dir)}
