"""IFEval instruction checks (VoiceBench's IFEval set) by lm-evaluation-harness's own code.

Each reply is checked with `lm_eval.tasks.ifeval.utils.test_instruction_following_strict`
and `..._loose` (lm-eval's copy of Google's IFEval checks; nothing here re-implements a
check), one instruction at a time, so that one instruction that cannot be checked here
does not hide the others:

- `prompt_strict` / `prompt_loose`: every instruction of the prompt followed (lm-eval's
  `prompt_level_*_acc`, per sample);
- `inst_strict_followed` / `inst_loose_followed` over `inst_count`: aggregate as a ratio for
  lm-eval's `inst_level_*_acc` (a flat share over all instructions);
- `unscorable`: 1 when some instruction could not be checked on this machine. Two of
  lm-eval's checks (`length_constraints:number_sentences`,
  `change_case:capital_word_frequency`) tokenise with NLTK's `punkt_tab` data, which no
  package here ships and which lm-eval downloads at import time; offline that data is
  missing and those checks raise. Such an instruction counts as NOT followed (the figure
  can only be too low, never too high) and the sample is flagged; online, or with the data
  under `NLTK_DATA`, every check runs. In an offline run (HF_*_OFFLINE=1, as
  `deeptalk-eval` sets without --online) lm-eval's download attempt is skipped.

Needs lm-eval's `ifeval` extra (`langdetect`, `immutabledict`), pinned in requirements.txt.
An instruction id lm-eval does not know is a data error, raised naming the id.
"""
from __future__ import annotations

import functools
import json
import os
from importlib import metadata
from typing import Any

from deeptalk_eval.scoring.base import SampleView, ScoringContext, register_scorer


def offline() -> bool:
    return any(os.environ.get(v) == "1" for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def nltk_punkt_available() -> bool:
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
        return True
    except LookupError:
        return False


@functools.lru_cache(maxsize=1)
def lm_eval_ifeval():
    """lm-eval's `lm_eval.tasks.ifeval.utils` (imported once). Its import downloads NLTK's
    punkt_tab when missing unless LOCAL_RANK != "0": offline, that attempt is skipped."""
    skip_download = offline() and not nltk_punkt_available()
    saved = os.environ.get("LOCAL_RANK")
    if skip_download:
        os.environ["LOCAL_RANK"] = "1"
    try:
        from lm_eval.tasks.ifeval import utils
    except ModuleNotFoundError as e:
        raise RuntimeError(f"lm-eval's IFEval checks need the package {e.name!r} "
                           f"(lm-eval's `ifeval` extra: pip install langdetect immutabledict)") from None
    finally:
        if skip_download:
            if saved is None:
                os.environ.pop("LOCAL_RANK", None)
            else:
                os.environ["LOCAL_RANK"] = saved
    return utils


def checker_name() -> str:
    return f"lm-eval=={metadata.version('lm_eval')}:lm_eval.tasks.ifeval.utils"


def check_instructions(instruction_ids: list[str], kwargs_list: list[dict[str, Any]], prompt: str,
                       reply: str) -> list[tuple[bool, bool, str | None]]:
    """(strict, loose, why_unscorable) per instruction, by lm-eval's checks."""
    utils = lm_eval_ifeval()
    from lm_eval.tasks.ifeval import instructions_registry

    out = []
    for iid, kw in zip(instruction_ids, kwargs_list):
        if iid not in instructions_registry.INSTRUCTION_DICT:
            raise ValueError(f"instruction id {iid!r} is not one of lm-eval's IFEval instructions")
        inp = utils.InputExample(key=0, instruction_id_list=[iid], prompt=prompt, kwargs=[kw or {}])
        try:
            strict = utils.test_instruction_following_strict(inp, reply).follow_all_instructions
            loose = utils.test_instruction_following_loose(inp, reply).follow_all_instructions
            out.append((bool(strict), bool(loose), None))
        except LookupError as e:  # NLTK data missing (offline): this check cannot run here
            resource = "punkt_tab" if "punkt" in str(e) else "NLTK data"
            out.append((False, False, f"{iid}: needs NLTK {resource}"))
    return out


@register_scorer("ifeval")
def ifeval(sample: SampleView, ctx: ScoringContext, instructions_field: str = "instruction_id_list",
           kwargs_field: str = "kwargs", prompt_field: str = "prompt") -> dict[str, float | None]:
    """IFEval by lm-eval's checks (module docstring): prompt_strict, prompt_loose,
    inst_strict_followed, inst_loose_followed, inst_count, unscorable, no_answer."""
    from deeptalk_eval.scoring.scorers import _field, _has_text, _sample_id

    sid = _sample_id(sample, ctx)
    ids = _field(sample, ctx, instructions_field)
    kwargs = sample.doc.get(kwargs_field)
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs)
    kwargs = [{} for _ in ids] if kwargs is None else kwargs
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"sample {sid!r}: {instructions_field!r} must be a list of instruction ids")
    if (not isinstance(kwargs, list) or len(kwargs) != len(ids)
            or not all(k is None or isinstance(k, dict) for k in kwargs)):
        raise ValueError(f"sample {sid!r}: {kwargs_field!r} must be a list of {len(ids)} mappings, one per instruction")
    prompt = str(sample.doc.get(prompt_field) or "")
    reply = sample.channel_text or ""
    try:
        checks = check_instructions(ids, kwargs, prompt, reply)
    except ValueError as e:
        raise ValueError(f"sample {sid!r}: {e}") from None
    unscorable = [why for _, _, why in checks if why]
    info = ctx.info.setdefault("ifeval", {"checker": checker_name(), "nltk_punkt_tab": nltk_punkt_available(),
                                          "unscorable_instructions": []})
    for why in unscorable:
        if why not in info["unscorable_instructions"]:
            info["unscorable_instructions"].append(why)
    return {"prompt_strict": float(all(s for s, _, _ in checks)), "prompt_loose": float(all(lo for _, lo, _ in checks)),
            "inst_strict_followed": float(sum(s for s, _, _ in checks)),
            "inst_loose_followed": float(sum(lo for _, lo, _ in checks)),
            "inst_count": float(len(checks)), "unscorable": float(bool(unscorable)),
            "no_answer": float(not _has_text(sample.channel_text))}
