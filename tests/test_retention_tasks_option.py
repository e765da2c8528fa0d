"""`--retention-tasks`: lm-eval task names become text-retention task files the run resolves."""
import pytest

from deeptalk_eval.cli import main
from deeptalk_eval.registry import TaskIndex
from deeptalk_eval.retention_tasks import write_retention_tasks
from deeptalk_eval.task_config import load_task


def test_names_become_lm_eval_tasks_in_the_retention_group(tmp_path):
    names = write_retention_tasks("mmlu, arc_easy,mmlu", tmp_path)
    assert names == ["text_retention_lm_eval_mmlu", "text_retention_lm_eval_arc_easy"]
    cfg = load_task(tmp_path / "text_retention_lm_eval_arc_easy.yaml")
    assert cfg.kind == "lm_eval" and cfg.lm_eval["tasks"] == ["arc_easy"] and cfg.lm_eval["include_path"] is None
    index = TaskIndex.scan([tmp_path])
    assert set(names) <= set(index.resolve("text_retention")) and set(names) <= set(index.resolve("all"))
    # a later run's list replaces the earlier one
    assert write_retention_tasks("hellaswag", tmp_path) == ["text_retention_lm_eval_hellaswag"]
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == ["text_retention_lm_eval_hellaswag.yaml"]


def test_bad_names_are_a_usage_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="not lm-eval task names"):
        write_retention_tasks("mmlu,rm -rf", tmp_path)
    code = main(["run", "--model", "base_llm", "--retention-tasks", " , ", "--output-dir", str(tmp_path)])
    assert code == 2 and "no lm-eval task name" in capsys.readouterr().err
