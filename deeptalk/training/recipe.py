"""Recipes: the YAML files that say what a training run builds, trains and for how long."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch
import yaml

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
STAGES = ("1", "assign", "2.1", "2.2", "3")


def _merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, mappings merged key by key (a stage's settings included)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_recipe(name_or_path: str, _seen: tuple = ()) -> dict:
    """A recipe by name (deeptalk/recipes/<name>.yaml) or path; yaml.safe_load, checked.

    `extends: <recipe>` starts from that recipe and overrides what this one names: the
    ablations are the reference with one thing changed, so they share data and budget."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"recipe {name_or_path!r} not found (known: {known}, or a path to a .yaml)")
    recipe = yaml.safe_load(path.read_text())
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a mapping, got {type(recipe).__name__}")
    if "extends" in recipe:
        parent = recipe.pop("extends")
        if parent in _seen or str(path) in _seen:
            raise ValueError(f"{path}: `extends` loops through {parent!r}")
        base = load_recipe(parent, _seen + (str(path),))
        base.pop("_path", None)
        recipe = _merge(base, recipe)
        recipe["extends"] = parent
    for key in ("name", "seed", "base", "speech_encoder", "codec", "data", "stages"):
        if key not in recipe:
            raise ValueError(f"{path}: missing field {key!r}")
    unknown = set(recipe["stages"]) - set(STAGES)
    if unknown:
        raise ValueError(f"{path}: unknown stage(s) {sorted(unknown)}; stages are {STAGES}")
    recipe["_path"] = str(path)
    return recipe


def recipe_stages(recipe: dict) -> list[str]:
    """The stages a recipe runs, in order: those it sets (`"2.2": null` leaves an inherited
    stage out), so `deeptalk-train --recipe NAME` alone runs the whole recipe."""
    return [s for s in STAGES if recipe["stages"].get(s) is not None]


def recipe_hash(recipe: dict) -> str:
    clean = {k: v for k, v in recipe.items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
