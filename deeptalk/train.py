"""The staged trainer (`deeptalk-train`), on accelerate: the same command on a CPU or many GPUs.

    deeptalk-train --recipe tiny|reference|PATH [--stages 1,assign,2.1,3] [--output DIR]
                   [--resume] [--hook "CMD {stage} {checkpoint}"] [--export DIR]
    accelerate launch --multi_gpu --num_processes 2 -m deeptalk.train --recipe tiny ...   # 2 CPU processes
    (accelerate 1.15's `launch --cpu --num_processes 2` starts one process: it needs mpirun)

Stages (the paper's):
    1       align: the speech projector learns on ASR pairs (transcript CE given speech); LLM frozen
    assign  adaptive modality-expert assignment (deeptalk/experts.py): load matrices + heatmap
    2.1     speech experts + audio embeddings / heads on spoken QA (speech + text answers);
            routing "masked": text experts unreachable and frozen
    2.2     text experts on text instructions; speech experts unreachable and frozen
    3       joint: every expert, audio tensors and projector, unmasked routing
Without `--stages`, every stage the recipe sets runs (a recipe leaves an inherited stage out
with `"2.2": null`). A recipe stage may list what it trains (`train: [speech_experts, audio, ...]`, see
TRAIN_GROUPS); the defaults above are the paper's. `text_experts_lowrank` with `lowrank_rank: r`
trains the text experts as W + B A (deeptalk/lowrank.py), merged when the stage ends, so the
shipped delta stores thin factors for them. `--export DIR` writes the last finished
stage as a delta over the base LLM (deeptalk/export.py), the form the reference ships in.

Every stage writes OUTPUT/stage-<tag>/: the model (save_pretrained, safetensors), the
projector, tokenizer, `stage.json` (steps, tokens, tokens/s, seconds, seed, hook result),
`loss.csv` + `loss.png`; while it runs, `state/` holds the last accelerate checkpoint, which
`--resume` continues from after a kill. After a stage, the hook command (if any) runs in a
shell with {stage}, {checkpoint} and {output} filled in; a non-zero exit stops the pipeline
(this is how CI gates a stage with `deeptalk-eval regress`; nothing here imports the harness).

Parts (deeptalk/training/): recipe.py (recipes), recipe_data.py (stage data sets), build.py
(base, codec, MoE, encoder), examples.py (training sequences, batches), param_groups.py (what
a stage trains), stage_loop.py (one training stage), assign_stage.py, hearing_stage.py,
plots.py (loss.png), pipeline.py (the stages in order); checkpoints: deeptalk/checkpoint.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from deeptalk.training.build import build_base
from deeptalk.training.pipeline import RecipeMismatch, run, stage_done
from deeptalk.training.recipe import STAGES, load_recipe, recipe_stages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deeptalk-train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="reference", help="tiny | reference | path to a recipe YAML")
    ap.add_argument("--stages", default=None,
                    help=f"comma list out of {','.join(STAGES)} (default: every stage the recipe sets)")
    ap.add_argument("--output", default=None, help="output dir (default runs/<recipe>)")
    ap.add_argument("--resume", action="store_true", help="skip finished stages, continue the running one")
    ap.add_argument("--hook", default=None, help="shell command after each stage ({stage} {checkpoint} {output})")
    ap.add_argument("--export", default=None, metavar="DIR",
                    help="afterwards, write the last finished stage as a delta over the base LLM into DIR")
    ap.add_argument("--export-dtype", default="bfloat16", help="bfloat16 | float16 | float32 (exact)")
    ap.add_argument("--export-max-mb", type=float, default=64.0, help="refuse a delta bigger than this")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    recipe = load_recipe(a.recipe)
    if a.stages is None:
        stages = recipe_stages(recipe)
    else:
        stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        ap.error(f"unknown stage(s) {bad}; stages are {','.join(STAGES)}")
    left_out = [s for s in stages if s not in recipe_stages(recipe)]
    if left_out:
        ap.error(f"recipe {recipe['name']!r} sets no stage {', '.join(left_out)} ({recipe['_path']})")
    out = Path(a.output or Path("runs") / recipe["name"])
    if stages:
        try:
            summary = run(recipe, out, stages, resume=a.resume, hook=a.hook)
        except RecipeMismatch as e:
            ap.error(str(e))
        print(json.dumps({s: {k: v.get(k) for k in ("steps", "tokens_per_s", "final_loss", "wall_seconds") if k in v}
                          for s, v in summary["stages"].items()}, indent=1))
    if a.export:
        from deeptalk.export import export_checkpoint

        last = [out / f"stage-{s}" for s in STAGES if stage_done(out / f"stage-{s}")]
        if not last:
            raise SystemExit(f"--export: no finished stage under {out}")
        dense = build_base(recipe)[0] if recipe["base"].get("kind") == "random_tiny" else None
        try:
            meta = export_checkpoint(last[-1], a.export, dtype=a.export_dtype, max_mb=a.export_max_mb, base=dense,
                                     run_files={"recipe.yaml": out / "recipe.yaml", "summary.json": out / "summary.json"})
        except ValueError as e:
            raise SystemExit(f"--export: {e}") from None
        print(f"exported {last[-1]} -> {a.export}: {meta['size_mb']} MB delta ({meta['dtype']})")
    elif not stages:
        ap.error("nothing to do: give --stages and/or --export")
    return 0


if __name__ == "__main__":
    sys.exit(main())
