"""Stage 1 for a CTC projector: the hearing corpus and CTC training (deeptalk/hearing.py)."""
from __future__ import annotations

import shutil
from pathlib import Path


def hearing_stage(recipe: dict, scfg: dict, encoder, tokenizer, path: Path, seed: int, resume: bool, acc) -> dict:
    """Stage 1 for a CTC projector: CTC on the hearing corpus, resumable (state in path/state)."""
    from deeptalk.hearing import HearingData, HearingTrain, build_hearing_data, train_ctc

    hd = dict(recipe["data"].get("hearing", {}))
    if "voices" in hd:
        hd["voices"] = tuple(hd["voices"])
    with acc.main_process_first():
        files, dev = build_hearing_data(HearingData(seed=seed, **hd), encoder, tokenizer)
    keys = {"lr", "batch_size", "max_steps", "max_seconds", "checkpoint_every", "eval_every", "warmup", "spec_augment", "top_lr"}
    cfg = HearingTrain(stride=encoder.config.stride, seed=seed, **{k: v for k, v in scfg.items() if k in keys})
    dtype = encoder.projector.fc1.weight.dtype
    encoder.projector.float()  # CTC trains in fp32 whatever the model's dtype
    res = train_ctc(encoder.projector, files, dev, tokenizer, cfg, path / "state", resume=resume, log=acc.print)
    encoder.projector.to(dtype)
    shutil.copy(path / "state" / "curve.csv", path / "hearing_curve.csv")
    return {"stage": "1", "steps": res["steps"], "seconds": round(res["seconds"], 2), "trains": "ctc projector",
            "dev_wer": res["dev_wer"], "utterances": res["utterances"],
            "trainable_parameters": sum(p.numel() for p in encoder.projector.parameters())}
