"""Build the offline data of the text-retention lm-eval tasks (tasks/text_retention/lm_eval/data/).

    python tasks/text_retention/build_lm_eval_data.py

Everything comes from what is installed here, so the tasks run without a network:

- mmlu_dev.jsonl     the real MMLU dev questions that lm-eval ships as chain-of-thought
                     exemplars (lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json):
                     question, choices A-D, gold letter, subject.
- bbh.jsonl          the BBH 3-shot exemplars lm-eval ships (lm_eval/tasks/bbh/fewshot/*.yaml),
                     each asked with the two other exemplars of its subtask as its shots
                     (leave-one-out), gold = the exemplar's target.
- factoid_mc.jsonl   the bsdgames factoid questions (tasks/spoken_qa/data/factoid.jsonl) as
                     4-way multiple choice: the gold answer and 3 answers of other questions
                     of the same category (seeded).
- heldout_text.jsonl English prose for perplexity / bits-per-byte: the game instructions
                     Debian bsdgames ships (cribbage.instr, fish.instr, wump.info; BSD
                     licence), cut at paragraph boundaries into chunks.

Deterministic (fixed seed); the outputs are small and committed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "lm_eval" / "data"
FACTOID = HERE.parent / "spoken_qa" / "data" / "factoid.jsonl"
BSDGAMES = Path("/usr/share/games/bsdgames")
HELDOUT_FILES = ("cribbage.instr", "fish.instr", "wump.info")
SEED = 0
CHUNK_CHARS = 1500  # ~350 tokens per chunk: many short docs rather than one long one
LETTERS = "ABCD"


def lm_eval_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("lm_eval is not installed (pip install lm-eval)")
    return Path(spec.submodule_search_locations[0])


# -- MMLU -------------------------------------------------------------------------------

# The JSON was written with unescaped LaTeX, so "\f", "\r", "\t", "\b" in it became control
# characters ("\frac" -> form feed + "rac"). Put the backslashes back.
_CONTROL = {"\f": "\\f", "\r": "\\r", "\t": "\\t", "\b": "\\b"}
_CHOICES = re.compile(r"\(A\)\s*(.*?)\s*\(B\)\s*(.*?)\s*\(C\)\s*(.*?)\s*\(D\)\s*(.*?)\s*$", re.S)
_GOLD = re.compile(r"answer is \(?([A-D])\)?")


def parse_mmlu_block(block: str) -> dict | None:
    """One 'Q: ... (A) ... (D) ...\\nA: ... The answer is (X).' exemplar; None if malformed."""
    if "\nA:" not in block:
        return None
    qa, _, reasoning = block.partition("\nA:")
    start = qa.find("(A)")
    if start < 0:
        return None
    question, choices = qa[:start].strip(), _CHOICES.search(qa[start:])
    gold = _GOLD.findall(reasoning)
    if not question or choices is None or not gold:
        return None
    opts = [c.strip() for c in choices.groups()]
    if any(not c for c in opts):
        return None
    return {"question": question, "choices": opts, "answer": gold[-1], "label": LETTERS.index(gold[-1])}


def build_mmlu(src: Path | None = None) -> tuple[list[dict], int]:
    """(items, number of exemplars that did not parse)."""
    src = src or lm_eval_dir() / "tasks" / "mmlu" / "flan_cot_fewshot" / "_cot_prompts.json"
    prompts = json.loads(src.read_text(encoding="utf-8"))
    items, bad = [], 0
    for subject in sorted(prompts):
        text = "".join(_CONTROL.get(ch, ch) for ch in prompts[subject])
        blocks = re.split(r"\n\nQ: |^.*?\n\nQ: ", text, flags=re.S)
        for k, block in enumerate(b for b in blocks if b.strip()):
            if block.startswith("The following are"):
                continue  # the subject header before the first question
            item = parse_mmlu_block(block)
            if item is None:
                bad += 1
                continue
            items.append({"id": f"mmlu-{subject}-{k}", "subject": subject.replace("_", " "), **item})
    return items, bad


# -- BBH --------------------------------------------------------------------------------


def build_bbh(src: Path | None = None) -> list[dict]:
    src = src or lm_eval_dir() / "tasks" / "bbh" / "fewshot"
    items = []
    for path in sorted(src.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        shots = cfg["fewshot_config"]["samples"]
        description = cfg.get("description", "").strip()
        for i, ex in enumerate(shots):
            others = [s for j, s in enumerate(shots) if j != i]
            context = "".join(f"Q: {s['input']}\nA: {s['target']}\n\n" for s in others)
            items.append({
                "id": f"bbh-{cfg['dataset_name']}-{i}",
                "subtask": cfg["dataset_name"],
                "prompt": f"{description}\n\n{context}Q: {ex['input']}\nA:",
                "target": str(ex["target"]).strip(),
            })
    return items


# -- factoid multiple choice ------------------------------------------------------------


def build_factoid_mc(src: Path = FACTOID, seed: int = SEED) -> list[dict]:
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_cat: dict[str, list[dict]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    rng = random.Random(seed)
    items = []
    for r in rows:
        gold_words = {a.lower() for a in r["answers"]}
        pool = sorted({o["answer"] for o in by_cat[r["category"]]
                       if o["answer"].lower() not in gold_words and o["id"] != r["id"]})
        distractors = rng.sample(pool, 3)
        choices = distractors + [r["answer"]]
        rng.shuffle(choices)
        items.append({"id": r["id"], "question": r["question"], "choices": choices,
                      "label": choices.index(r["answer"])})
    return items


# -- held-out prose ---------------------------------------------------------------------


def build_heldout(src_dir: Path = BSDGAMES, files=HELDOUT_FILES, chunk_chars: int = CHUNK_CHARS) -> list[dict]:
    items = []
    for name in files:
        path = src_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: install the Debian package bsdgames")
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", path.read_text(encoding="latin-1"))]
        chunk, k = "", 0
        for p in (p for p in paragraphs if p):
            if chunk and len(chunk) + len(p) > chunk_chars:
                items.append({"id": f"{name}-{k}", "source": f"bsdgames {name}", "text": chunk})
                chunk, k = "", k + 1
            chunk = f"{chunk}\n\n{p}" if chunk else p
        if chunk:
            items.append({"id": f"{name}-{k}", "source": f"bsdgames {name}", "text": chunk})
    return items


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = ap.parse_args()
    mmlu, bad = build_mmlu()
    sets = {"mmlu_dev": mmlu, "bbh": build_bbh(), "factoid_mc": build_factoid_mc(), "heldout_text": build_heldout()}
    for name, rows in sets.items():
        write_jsonl(args.out_dir / f"{name}.jsonl", rows)
        print(f"{name}: {len(rows)} items")
    print(f"mmlu: {bad} exemplars did not parse and were left out")


if __name__ == "__main__":
    main()
