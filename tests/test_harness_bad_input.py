"""Every bad input of the harness issue: a clear message naming what and where, exit 2,
checked before anything runs (no model call, no results file)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from deeptalk_eval.task_config import load_task
from deeptalk_eval.task_docs import load_docs
from deeptalk_eval.task_yaml import TaskConfigError

GOOD = """task: t1
version: 1
dataset:
  path: docs.jsonl
  id_field: id
input: {modality: text, text_field: q}
scorers:
  - {name: echo_match}
metrics:
  - {name: acc, aggregation: mean}
"""


def make_task(folder: Path, text: str = GOOD, docs: list[dict] | None = None, name: str = "t1.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    if docs is None:
        docs = [{"id": "a", "q": "one", "answers": ["one"]}, {"id": "b", "q": "two", "answers": ["x"]}]
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return folder / name


def run_args(scripted, tasks_dir, out, *extra):
    return ["--model-path", scripted, "--include-path", tasks_dir, "--output-dir", out, "--no-progress", *extra]


def assert_nothing_ran(out: Path):
    assert not list(out.glob("*/*.json"))


def test_unknown_model_names_the_nearest(cli, tmp_path):
    code, _, err = cli("--model", "cascad", "--tasks", "all", "--output-dir", tmp_path)
    assert code == 2
    assert "unknown model 'cascad'" in err and "did you mean cascade" in err


def test_unknown_task_names_the_nearest(cli, scripted, test_tasks, tmp_path):
    code, _, err = cli(*run_args(scripted, test_tasks, tmp_path, "--tasks", "echo_qa,echo_fats"))
    assert code == 2
    assert "unknown task or group 'echo_fats'" in err and "echo_fast" in err
    assert_nothing_ran(tmp_path)


def test_bad_model_path(cli, tmp_path):
    code, _, err = cli("--model-path", "tests/scripted_adapter.py:ScriptedModle", "--output-dir", tmp_path)
    assert code == 2 and "ScriptedModle" in err and "did you mean ScriptedModel" in err
    code, _, err = cli("--model-path", "no/such/file.py:X", "--output-dir", tmp_path)
    assert code == 2 and "not found" in err


def test_malformed_yaml_names_file_and_line(cli, scripted, tmp_path):
    path = make_task(tmp_path / "tasks", GOOD.replace("  id_field: id", "  id_field: [id"))
    code, _, err = cli(*run_args(scripted, tmp_path / "tasks", tmp_path / "out", "--tasks", "t1"))
    assert code == 2
    assert f"{path}:" in err and "malformed YAML" in err
    line = int(err.split(f"{path}:")[1].split(":")[0])
    assert line in (5, 6, 7)  # the unclosed bracket, reported where the parser gives up
    assert_nothing_ran(tmp_path / "out")


@pytest.mark.parametrize("change, where, words", [
    (("  id_field: id\n", ""), ":3: field 'dataset'", "required field 'id_field'"),
    (("aggregation: mean", "aggregation: average"), ":10: field 'metrics[0].aggregation'", "'average' is not one of"),
    (("input:", "inptu:"), ":6: field 'inptu'", "did you mean 'input'"),
    (("version: 1\n", ""), "field '<top>'", "required field 'version'"),
    (("{name: echo_match}", "{name: echo_match, channel: video}"), ":8: field 'scorers[0].channel'", "'video'"),
    (("{modality: text, text_field: q}", "{modality: speech, text_field: q}"), ":6: field 'input'",
     "speech input needs"),
])
def test_schema_errors_name_file_line_field(tmp_path, change, where, words):
    path = make_task(tmp_path, GOOD.replace(*change))
    with pytest.raises(TaskConfigError) as e:
        load_task(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and where in msg and words in msg, msg


def test_unknown_scorer_is_a_usage_error(cli, scripted, tmp_path):
    make_task(tmp_path / "tasks", GOOD.replace("echo_match", "exact_mach"))
    code, _, err = cli(*run_args(scripted, tmp_path / "tasks", tmp_path / "out", "--tasks", "t1"))
    assert code == 2 and "field 'scorers[0].name'" in err and "exact_match" in err


def test_missing_data_file(cli, scripted, tmp_path):
    make_task(tmp_path / "tasks")
    (tmp_path / "tasks" / "docs.jsonl").unlink()
    code, _, err = cli(*run_args(scripted, tmp_path / "tasks", tmp_path / "out", "--tasks", "t1"))
    assert code == 2 and "docs.jsonl: data file not found" in err
    assert_nothing_ran(tmp_path / "out")


def test_duplicate_ids_and_missing_ids(tmp_path):
    path = make_task(tmp_path, docs=[{"id": "a", "q": "x"}, {"id": "b", "q": "y"}, {"id": "a", "q": "z"}])
    with pytest.raises(TaskConfigError, match=r"duplicate sample id 'a' \(samples #0 and #2\)"):
        load_docs(load_task(path))
    path = make_task(tmp_path, docs=[{"id": "a", "q": "x"}, {"q": "y"}])
    with pytest.raises(TaskConfigError, match=r"sample #1 has no id field 'id'"):
        load_docs(load_task(path))


def test_broken_jsonl_line_is_named(tmp_path):
    path = make_task(tmp_path)
    (tmp_path / "docs.jsonl").write_text('{"id": "a", "q": "x"}\n{"id": "b", q}\n')
    with pytest.raises(TaskConfigError, match=r"docs.jsonl:2: not valid JSON"):
        load_docs(load_task(path))


def test_output_dir_not_writable(cli, scripted, test_tasks, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    counter = tmp_path / "calls.txt"
    code, _, err = cli(*run_args(scripted, test_tasks, blocker / "results", "--tasks", "echo_fast",
                                 "--model-args", f"counter={counter}"))
    assert code == 2 and "is not writable" in err and str(blocker) in err
    assert not counter.exists()  # checked before the model ran


def test_bad_numbers_and_shards(cli, scripted, test_tasks, tmp_path):
    for extra, words in ((["--shard", "3/3"], "--shard '3/3'"), (["--batch-size", "0"], "--batch-size"),
                         (["--limit", "0"], "--limit"), (["--model-args", "novalue"], "is not key=value")):
        code, _, err = cli(*run_args(scripted, test_tasks, tmp_path, "--tasks", "echo_fast", *extra))
        assert code == 2 and words in err, (extra, err)


def test_bad_model_args_exit_2(cli, scripted, test_tasks, tmp_path):
    code, _, err = cli(*run_args(scripted, test_tasks, tmp_path, "--tasks", "echo_fast", "--model-args", "colour=red"))
    assert code == 2 and "colour" in err


def test_validate_and_list(cli, test_tasks, tmp_path):
    code, out, err = cli("validate", test_tasks / "echo" / "echo_qa.yaml")
    assert code == 0, err
    assert "20 samples" in out and "first prompt: 'paris'" in out
    bad = make_task(tmp_path, GOOD.replace("aggregation: mean", "aggregation: avg"))
    code, _, err = cli("validate", bad)
    assert code == 2 and "metrics[0].aggregation" in err
    code, out, _ = cli("list", "tasks", "--include-path", test_tasks)
    assert code == 0 and "echo_qa" in out and "echo_stream" in out
    code, out, _ = cli("list", "models")
    assert code == 0 and "deeptalk_eval.models.cascade:Cascade" in out
    code, out, _ = cli("list", "groups", "--include-path", test_tasks)
    assert code == 0 and "echo" in out and "all" in out


def test_function_hook_resolves_beside_the_yaml(tmp_path):
    text = GOOD.replace("  id_field: id", "  id_field: id\n  process_docs: !function hooks.keep_first")
    path = make_task(tmp_path, text)
    (tmp_path / "hooks.py").write_text("def keep_first(docs):\n    return docs[:1]\n")
    assert [d["id"] for d in load_docs(load_task(path))] == ["a"]
    # a second folder's hooks.py is its own module, not the first one's
    path2 = make_task(tmp_path / "second", text.replace("keep_first", "missing_hook"))
    (tmp_path / "second" / "hooks.py").write_text("X = 1\n")
    with pytest.raises(TaskConfigError, match=r"t1.yaml:6: field 'dataset.process_docs': "
                                              r"!function hooks.missing_hook: .*no attribute 'missing_hook'"):
        load_task(path2)
    # a hook that raises on the docs is named with its line too
    path3 = make_task(tmp_path / "third", text.replace("keep_first", "missing_hook"))
    (tmp_path / "third" / "hooks.py").write_text("def missing_hook(docs):\n    raise KeyError('q')\n")
    with pytest.raises(TaskConfigError, match=r"t1.yaml:6: process_docs hooks.missing_hook failed: KeyError"):
        load_docs(load_task(path3))


def test_hub_dataset_offline_without_local_file(cli, scripted, tmp_path):
    text = GOOD.replace("  path: docs.jsonl", "  path: missing.jsonl\n  hub: {path: someone/some_dataset, split: test}")
    make_task(tmp_path / "tasks", text)
    code, _, err = cli(*run_args(scripted, tmp_path / "tasks", tmp_path / "out", "--tasks", "t1"))
    assert code == 2
    assert "cannot load hub dataset 'someone/some_dataset'" in err and "missing.jsonl is missing" in err


def test_online_only_task_is_skipped_offline_and_said(cli, scripted, tmp_path):
    text = GOOD.replace("  path: docs.jsonl", "  hub: {path: someone/some_dataset, split: test}")
    make_task(tmp_path / "tasks", text)
    code, out, err = cli(*run_args(scripted, tmp_path / "tasks", tmp_path / "out", "--tasks", "t1"))
    assert code == 0
    assert "skipped: online-only dataset (run with --online)" in out + err
