"""The written form of heard words (deeptalk/speech/written_form.py) on the development questions.

Takes the 200 questions in the form a CTC piece head hands them over (lower case, no
punctuation), writes each the way the LLM prefers (capitals, end mark) and compares with the
questions as typed: end marks that agree, capitals found and capitals written where the typed
question has none. The written file is the data of the task `gk_dev_t2t_written_form`: what the
base LLM answers when hearing is perfect and the written form is this module's.

    python benchmarks/written_form_probe.py --out benchmarks/results/hearing/written_form_probe.json
    deeptalk-eval --model base_llm --include-path benchmarks/tasks/general_knowledge_dev --tasks gk_dev_t2t_written_form
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "benchmarks" / "data"


def _typed_words(q: str) -> list[str]:
    """The typed question's words with their case, punctuation dropped as the head drops it."""
    return re.sub(r"[^A-Za-z0-9' ]+", " ", q.replace("-", " ")).split()


def compare(written_qs: list[str], typed: list[str]) -> dict:
    ends = sum(w.strip()[-1:] == t.strip()[-1:] for w, t in zip(written_qs, typed))
    names = found = spurious = 0
    for w, t in zip(written_qs, typed):
        ww, tw = w.strip().rstrip("?.").split(), _typed_words(t)
        if len(ww) != len(tw):
            continue
        for a, b in list(zip(ww, tw))[1:]:
            names += b[0].isupper()
            found += b[0].isupper() and a[0].isupper()
            spurious += a[0].isupper() and not b[0].isupper()
    return {"n": len(typed), "end_mark_agrees": ends, "capitals_typed": names, "capitals_found": found,
            "capitals_spurious": spurious}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from deeptalk.speech.written_form import FORMS

    ap.add_argument("--form", default="true_case", choices=FORMS)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--written", type=Path, default=DATA / "general_knowledge_dev_written_form.jsonl")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from deeptalk.speech.written_form import WrittenForm, turn_scorer, written
    from deeptalk_common.base_llm import load_base_llm

    llm, tok = load_base_llm()
    score = turn_scorer(llm.eval(), tok)
    cfg = WrittenForm(form=a.form, passes=a.passes)
    heard = [json.loads(ln) for ln in (DATA / "general_knowledge_dev_heard_form.jsonl").read_text().splitlines() if ln]
    typed = [json.loads(ln)["question"] for ln in (DATA / "general_knowledge_dev.jsonl").read_text().splitlines() if ln]
    t0 = time.monotonic()
    out = [written(r["question"].strip(), score, cfg) for r in heard]
    seconds = time.monotonic() - t0
    a.written.write_text("".join(json.dumps({**r, "question": " " + q}) + "\n" for r, q in zip(heard, out)))
    res = {"form": a.form, "passes": a.passes, **compare(out, typed), "seconds_per_question": round(seconds / len(out), 3),
           "threads": a.threads, "load_average": os.getloadavg(), "written": str(a.written.relative_to(ROOT)),
           "examples": [{"heard": r["question"], "written": q} for r, q in list(zip(heard, out))[:8]]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "examples"}, indent=1))


if __name__ == "__main__":
    main()
