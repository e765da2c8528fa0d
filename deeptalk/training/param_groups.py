"""What a stage trains: named parameter groups, frozen or not, and the routing mode while training."""
from __future__ import annotations

from deeptalk.config import ROUTING_MODES

# What each stage trains (the paper's schedule). A recipe stage may name its own list under
# `train:` (e.g. the shipped reference keeps text experts frozen to fit its delta budget).
TRAIN_GROUPS = ("projector", "audio", "speech_experts", "text_experts", "text_experts_lowrank", "experts",
                "shared_experts", "routers", "llm_ffn", "llm")
DEFAULT_TRAIN = {
    "1": ["projector"],
    "2.1": ["speech_experts", "audio"],
    "2.2": ["text_experts"],
    "3": ["speech_experts", "text_experts", "audio", "projector"],
}
# no modality split (pure MoE) or no MoE at all (dense fine-tune): the same stages, no groups
DEFAULT_TRAIN_UNSPLIT = {
    "1": ["projector"],
    "2.1": ["experts", "audio"],
    "2.2": ["experts"],
    "3": ["experts", "audio", "projector"],
}


def stage_train_groups(model, stage: str, scfg: dict | None = None) -> list[str]:
    """The parameter groups `stage` trains: the recipe's `train:` list or the default schedule."""
    if stage not in DEFAULT_TRAIN:
        raise ValueError(f"not a training stage: {stage!r}")
    split = model.config.speech_experts is not None
    groups = list((scfg or {}).get("train") or (DEFAULT_TRAIN if split else DEFAULT_TRAIN_UNSPLIT)[stage])
    bad = [g for g in groups if g not in TRAIN_GROUPS]
    if bad:
        raise ValueError(f"stage {stage}: unknown train group(s) {bad}; groups are {TRAIN_GROUPS}")
    if {"text_experts", "text_experts_lowrank"} <= set(groups):
        raise ValueError(f"stage {stage}: train the text experts in full or low-rank, not both")
    if not split and {"speech_experts", "text_experts", "text_experts_lowrank"} & set(groups):
        raise ValueError(f"stage {stage}: train groups {groups} need a modality map; this model has none "
                         "(pure MoE / dense): use 'experts'")
    return groups


def _group_parameters(model, encoder, group: str) -> list:
    if group == "projector":
        return list(encoder.projector.parameters())
    if group == "audio":
        return [p for n, p in model.named_parameters() if n.startswith(("model.audio_embed", "audio_head"))]
    if group in ("speech_experts", "text_experts"):
        want = group == "speech_experts"
        return [p for moe in model.moe_layers for e, ex in enumerate(moe.experts) if bool(moe.speech_group[e]) == want
                for p in ex.parameters()]
    if group == "text_experts_lowrank":  # the factors train_stage registered (deeptalk/lowrank.py)
        from deeptalk.lowrank import lowrank_parameters

        return lowrank_parameters(model, "text")
    if group == "experts":
        return [p for moe in model.moe_layers for p in moe.experts.parameters()]
    if group == "shared_experts":
        return [p for moe in model.moe_layers if moe.shared_experts is not None for p in moe.shared_experts.parameters()]
    if group == "routers":
        return [p for moe in model.moe_layers for p in moe.router.parameters()]
    if group == "llm_ffn":  # every feed-forward layer, dense or MoE (the dense fine-tune ablation)
        return [p for layer in model.model.layers for p in layer.mlp.parameters()]
    if group == "llm":  # every LLM weight: the dense "native MLLM" full fine-tune
        return list(model.parameters())
    raise ValueError(f"unknown train group {group!r}")


def set_trainable(model, encoder, stage: str, scfg: dict | None = None) -> str:
    """Freeze everything, unfreeze the stage's groups; returns the routing mode used while training.

    Stages 2.1 / 2.2 of a split model route with the paper's masking (the frozen group's
    router logits are -inf); stage 1 and 3, and unsplit models, route over every expert. A
    stage's `routing:` overrides that: "modality" trains with the routing the reference infers
    with (only the groups in `train:` learn), "all" or "masked" as named.
    """
    groups = stage_train_groups(model, stage, scfg)
    model.requires_grad_(False)
    encoder.projector.requires_grad_(False)
    split = model.config.speech_experts is not None
    routing = (scfg or {}).get("routing")
    if routing is not None and routing not in ROUTING_MODES:
        raise ValueError(f"stage {stage}: routing {routing!r}, expected one of {ROUTING_MODES}")
    if routing not in (None, "all") and not split:
        raise ValueError(f"stage {stage}: routing {routing!r} needs a model with speech experts")
    if routing == "modality":
        model.set_routing_mode("modality")
        model.set_trainable_modality(None)
        model.requires_grad_(False)
    elif split and (stage in ("2.1", "2.2") if routing is None else routing == "masked"):
        model.set_routing_mode("masked")
        model.set_trainable_modality("text" if stage == "2.2" else "speech")  # sets the mask (and expert grads)
        model.requires_grad_(False)
    else:
        model.set_routing_mode("all")
        if split:
            model.set_trainable_modality(None)
            model.requires_grad_(False)
    if "projector" in groups and encoder.reads_as_text and stage != "1":
        raise ValueError(f"stage {stage}: a CTC projector trains in stage 1 only (its positions are the tokens it "
                         "hears, fixed when the stage's examples are built): drop 'projector' from this stage's train list")
    for g in groups:
        params = _group_parameters(model, encoder, g)
        if not params:
            raise ValueError(f"stage {stage}: train group {g!r} has no parameters in this model")
        for p in params:
            p.requires_grad_(True)
    return model.config.routing_mode
