"""The `assign` stage: measure modality load and install the speech / text expert map."""
from __future__ import annotations

from pathlib import Path

import torch

from deeptalk.sequence import ANSWER_MODALITY, SPEECH_MODALITY
from deeptalk.training.examples import Example, collate, qa_examples, text_examples


def assign_stage(model, encoder, tokenizer, scfg: dict, qa_set, data, path: Path, seed: int, acc, codec=None) -> dict:
    """Measure modality load on speech-only and text-only batches and install the modality map
    (`codec`: the "words" answer layout reads the spoken answers with it). `copy: true` gives
    speech copies of the chosen experts and leaves the originals to text (`add_speech_copies`);
    `measure_top_k` is the router's k while the load is counted (default: the model's)."""
    from deeptalk.experts import (
        add_speech_copies,
        assign_modality_experts,
        measure_modality_load,
        random_assignment,
        write_assignment,
    )

    method, k = scfg.get("method", "adaptive"), int(scfg["speech_experts"])
    copy, measure_k = bool(scfg.get("copy", False)), scfg.get("measure_top_k")
    if copy and method == "pure":
        raise ValueError("assign: copy needs speech experts to copy (method adaptive or random)")
    n = int(scfg.get("batches", 8))
    qa = qa_examples(qa_set, encoder, tokenizer, model.config, codec=codec)[:n]
    tx = text_examples(data["text"], tokenizer, model.config)[:n]
    if not qa or not tx:
        raise ValueError(f"assignment needs speech and text examples, got {len(qa)} and {len(tx)}")

    def forward_args(e: Example, speech: bool) -> dict:
        b = collate([e], tokenizer.eos_token_id, model.config.num_codebooks)
        args = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        if speech:  # only the speech positions (input frames + spoken answer steps) count as speech
            modality = b["token_modality"].clone()
            # a spoken-answer step of the "both" routing is speech the speech experts will serve
            # (the load is measured unmasked, so this changes only what is counted)
            modality[modality == ANSWER_MODALITY] = SPEECH_MODALITY
            keep = modality[0] == SPEECH_MODALITY
            args["token_modality"] = modality
            with torch.no_grad():
                args["speech_embeds"] = encoder.projector(e.feats.unsqueeze(0).to(encoder.projector.fc1.weight.dtype))[0]
            args["audio_codes"] = b["audio_codes"]
            if not keep.any():
                raise ValueError("assignment: a spoken-QA example has no speech position to measure")
        return args

    path.mkdir(parents=True, exist_ok=True)
    rho_a = rho_t = None
    if method == "adaptive":
        rho_a, rho_t = measure_modality_load(model, [forward_args(e, True) for e in qa], [forward_args(e, False) for e in tx],
                                             top_k=None if measure_k is None else int(measure_k))
        experts = assign_modality_experts(rho_a, rho_t, k)
    elif method == "random":
        experts = random_assignment(model.config.num_moe_layers, model.config.num_routed_experts, k, seed)
    elif method == "pure":
        experts = None
    else:
        raise ValueError(f"assignment method {method!r}: expected adaptive, random or pure")
    copied_from = down_start = None
    if copy:
        # a spoken-answer step that also runs every text expert starts as the base FFN
        zero_down = model.config.answer_routing == "both"
        copied_from, experts = experts, add_speech_copies(model, experts, zero_down=zero_down)
        down_start = "zero" if zero_down else "copied"
    record = write_assignment(model, experts, path if acc.is_main_process else None, rho_a, rho_t, method=method,
                              k=k, seed=seed, copied_from=copied_from, copies_down_start=down_start)
    return {"stage": "assign", **record, "measure_top_k": measure_k, "speech_batches": len(qa), "text_batches": len(tx)}
