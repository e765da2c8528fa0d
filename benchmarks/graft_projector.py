"""A checkpoint folder = an existing checkpoint with another speech projector: measures a new
stage 1 on a trained LLM without retraining the later stages.

    python benchmarks/graft_projector.py --checkpoint checkpoints/reference \
        --projector runs/hearing/long/state.pt --stride 4 --out runs/reference-ctc
    deeptalk-eval --model deeptalk --model-args path=runs/reference-ctc --tasks spoken_qa_factoid_s2t

The LLM files are linked, not copied; only speech_encoder.{safetensors,json} and stage.json
differ (stage.json records the graft). What it measures is the hearing alone: the later
stages were trained with the old projector's input.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--projector", type=Path, required=True, help="a train_ctc state.pt or projector-*.pt")
    ap.add_argument("--stride", type=int, required=True)
    ap.add_argument("--whisper", default=None, help="the encoder the projector was trained on (default: the checkpoint's)")
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None, help="default: as many as the projector holds")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    state = torch.load(a.projector, weights_only=False)
    state = state.get("projector", state)
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    for f in a.checkpoint.iterdir():
        if f.name not in ("speech_encoder.safetensors", "speech_encoder.json", "stage.json") and f.is_file():
            os.symlink(f.resolve(), a.out / f.name)
    enc = json.loads((a.checkpoint / "speech_encoder.json").read_text())
    # the projector's own layers and tuned Whisper blocks are in its state; the config must say so
    layers = a.layers if a.layers is not None else len({k.split(".")[1] for k in state if k.startswith("layers.")})
    tuned = len({k.split(".")[2] for k in state if k.startswith("top.blocks.")})
    kind = "ctc_chars" if "chars.weight" in state else "ctc"
    enc.update({"whisper": a.whisper or enc["whisper"], "stride": a.stride, "projector": kind, "projector_hidden": a.hidden,
                "projector_layers": layers, "tune_blocks": tuned})
    (a.out / "speech_encoder.json").write_text(json.dumps(enc, indent=1))
    save_file({k: v.contiguous() for k, v in state.items()}, str(a.out / "speech_encoder.safetensors"))
    info = json.loads((a.checkpoint / "stage.json").read_text()) if (a.checkpoint / "stage.json").is_file() else {}
    info["graft"] = {"from": str(a.checkpoint), "projector": str(a.projector), "kind": kind, "stride": a.stride,
                     "tune_blocks": tuned}
    (a.out / "stage.json").write_text(json.dumps(info, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
