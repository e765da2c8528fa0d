"""A running stage's last saved state as a checkpoint folder: evaluate a long stage mid-way.

    python -m deeptalk.training.snapshot --run runs/reference-phones --stage 2.1 --out runs/snapshots/2.1

The stage loop saves the trainee (projector + LLM) with its optimizer every `checkpoint_every`
steps (`stage-<s>/state/accelerate`); this loads the weights into the stage's starting model,
sets the routing the pipeline sets after a stage, and writes a folder that `deeptalk-eval
--model deeptalk --model-args path=...` reads. The run itself is not touched.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml


def snapshot(run: Path, stage: str, out: Path) -> dict:
    from safetensors.torch import load_file

    from deeptalk.checkpoint import load_checkpoint, save_checkpoint
    from deeptalk.training.pipeline import stage_done
    from deeptalk.training.recipe import STAGES

    state = run / f"stage-{stage}" / "state"
    if not (state / "progress.json").is_file():
        raise FileNotFoundError(f"{state}: no saved state (the stage saves one every checkpoint_every steps)")
    start = next((run / f"stage-{s}" for s in reversed(STAGES[: STAGES.index(stage)]) if stage_done(run / f"stage-{s}")),
                 None)
    if start is None:
        raise FileNotFoundError(f"{run}: no finished stage before {stage} to start from")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    progress = json.loads((state / "progress.json").read_text())
    b = load_checkpoint(start)
    model, encoder = b.model, b.encoder
    weights = load_file(str(state / "accelerate" / "model.safetensors"))
    llm = {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}
    proj = {k[len("projector."):]: v for k, v in weights.items() if k.startswith("projector.")}
    missing, unexpected = model.load_state_dict(llm, strict=False)
    # the saver drops tied copies (lm_head = embeddings); anything else missing is a mismatch
    if unexpected or any(not k.startswith("lm_head.") for k in missing):
        raise ValueError(f"{state}: weights do not fit {start.name}'s model (missing {missing[:3]}, unknown {unexpected[:3]})")
    model.tie_weights()
    encoder.projector.load_state_dict(proj)
    model.config.answer_routing = recipe.get("answer_routing", model.config.answer_routing)
    model.config.answer_layout = recipe.get("answer_layout", model.config.answer_layout)
    if model.config.speech_experts is not None:
        model.set_routing_mode(recipe.get("inference_routing", "all"))
        model.set_trainable_modality(None)
    ref = json.loads((start / "codec.json").read_text())
    if "path" in ref:
        ref["src_dir"] = str(start)
    info = {"snapshot_of": stage, "run": str(run), "done": False, **progress}
    out.mkdir(parents=True, exist_ok=True)
    if (run / f"stage-{stage}" / "loss.csv").is_file():
        shutil.copy(run / f"stage-{stage}" / "loss.csv", out / "loss.csv")
    save_checkpoint(out, model, b.tokenizer, encoder, ref, info)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deeptalk.training.snapshot", description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--stage", required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    try:
        info = snapshot(a.run, a.stage, a.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"snapshot: {e}", file=sys.stderr)
        return 2
    print(f"stage {a.stage} at step {info['step']} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
