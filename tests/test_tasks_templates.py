"""`include:` templates in task files: fields merged top-level (later templates and the task
file win), nested, cycles and missing or malformed templates refused in one line naming the
file, line and field; templates never listed as tasks; and a task's `config_sha256` follows
its resolved fields, not how they are spread over files."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, SCRIPTED, TEST_TASKS

from deeptalk_eval.registry import TaskIndex
from deeptalk_eval.task_config import config_sha256, load_task
from deeptalk_eval.task_yaml import TaskConfigError, is_template

FLAT = """\
task: t1
group: [g1]
version: 1
description: a task
dataset: {path: data.jsonl, id_field: id}
input: {modality: text, text_field: q}
generation: {max_new_tokens: 8, temperature: 0.0}
scorers:
  - {name: exact_match, args: {answers_field: a}}
metrics:
  - {name: exact_match, aggregation: mean}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def one_line_error(path: Path) -> str:
    with pytest.raises(TaskConfigError) as e:
        load_task(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_task_fields_override_nested_templates_one_top_level_field_at_a_time(tmp_path):
    write(tmp_path, "_base.yaml", """\
        group: [g1]
        version: 1
        description: from the base
        dataset: {path: data.jsonl, id_field: id}
        input: {modality: text, text_field: q}
        generation: {max_new_tokens: 64, temperature: 0.0}
        scorers: [{name: exact_match, args: {answers_field: a}}]
        metrics: [{name: exact_match}]
        """)
    write(tmp_path, "_mid.yaml", "include: _base.yaml\ndescription: from the middle\n")
    write(tmp_path, "_other.yaml", "version: 2\ngroup: [g2]\n")
    task = write(tmp_path, "t1.yaml", """\
        include: [_mid.yaml, _other.yaml]
        task: t1
        group: [g3]
        generation: {max_new_tokens: 8}
        """)
    cfg = load_task(task)
    assert cfg.name == "t1" and cfg.groups == ["g3"]  # the task file wins
    assert cfg.version == 2  # a later template wins over an earlier one
    assert cfg.description == "from the middle"  # an including template wins over its own template
    # shallow: the task's generation block replaces the template's whole block
    assert cfg.raw["generation"] == {"max_new_tokens": 8}
    assert "include" not in cfg.raw and "include" not in cfg.record()["config"]
    assert cfg.includes == [(tmp_path / n).resolve() for n in ("_mid.yaml", "_base.yaml", "_other.yaml")]
    assert cfg.record()["includes"] == [str(p) for p in cfg.includes]
    assert cfg.data_path == (tmp_path / "data.jsonl").resolve()


def test_a_template_means_what_it_would_in_the_task_file(tmp_path):
    """Relative paths and !function modules in a template are the task file's, wherever the
    template lives: the resolved fields alone define the task."""
    write(tmp_path, "_shared/_qa.yaml", """\
        dataset: {path: data/qa.jsonl, id_field: id, process_docs: !function hooks.docs}
        """)
    write(tmp_path, "family/hooks.py", "def docs(docs):\n    return docs\n")
    task = write(tmp_path, "family/t1.yaml", "include: ../_shared/_qa.yaml\n" + FLAT.replace(
        "dataset: {path: data.jsonl, id_field: id}\n", ""))
    cfg = load_task(task)
    assert cfg.data_path == (tmp_path / "family" / "data" / "qa.jsonl").resolve()
    assert Path(cfg.process_docs.base_dir) == (tmp_path / "family").resolve()
    assert cfg.process_docs.resolve()([{"id": 1}]) == [{"id": 1}]


@pytest.mark.parametrize("files, where, what", [
    ({"t1.yaml": "include: t1.yaml\n" + FLAT}, "t1.yaml:1: field 'include'", "include cycle: t1.yaml -> t1.yaml"),
    ({"t1.yaml": "include: _a.yaml\n" + FLAT, "_a.yaml": "include: [_b.yaml]\n", "_b.yaml": "include: _a.yaml\n"},
     "_b.yaml:1: field 'include'", "include cycle: _a.yaml -> _b.yaml -> _a.yaml"),
    ({"t1.yaml": FLAT + "include: [_here.yaml, _gone.yaml]\n", "_here.yaml": "version: 1\n"},
     "t1.yaml:12: field 'include[1]'", "_gone.yaml not found"),
    ({"t1.yaml": "include: _list.yaml\n" + FLAT, "_list.yaml": "- a\n- b\n"},
     "t1.yaml:1: field 'include'", "_list.yaml is not a mapping of fields (got list)"),
    ({"t1.yaml": "include: _empty.yaml\n" + FLAT, "_empty.yaml": "# nothing yet\n"},
     "t1.yaml:1: field 'include'", "_empty.yaml is not a mapping of fields (got nothing)"),
    ({"t1.yaml": "include: {file: _a.yaml}\n" + FLAT}, "t1.yaml:1: field 'include'", "a template file"),
])
def test_bad_includes_are_one_line_naming_file_line_and_field(tmp_path, files, where, what):
    for name, text in files.items():
        write(tmp_path, name, text)
    msg = one_line_error(tmp_path / "t1.yaml")
    assert where in msg and what in msg, msg


def test_a_diamond_is_not_a_cycle(tmp_path):
    write(tmp_path, "_base.yaml", "version: 1\n")
    write(tmp_path, "_a.yaml", "include: _base.yaml\n")
    write(tmp_path, "_b.yaml", "include: _base.yaml\n")
    cfg = load_task(write(tmp_path, "t1.yaml", "include: [_a.yaml, _b.yaml]\n" + FLAT))
    assert [p.name for p in cfg.includes] == ["_a.yaml", "_base.yaml", "_b.yaml"]


def test_a_bad_field_in_a_template_names_the_template_and_its_line(tmp_path):
    write(tmp_path, "_t.yaml", "version: 1\ngeneration: {max_new_tokens: 8}\nscorer: []\n")
    msg = one_line_error(write(tmp_path, "t1.yaml", "include: _t.yaml\n" + FLAT))
    assert f"{(tmp_path / '_t.yaml').resolve()}:3: field 'scorer'" in msg and "did you mean 'scorers'" in msg
    write(tmp_path, "_t.yaml", "input: {modality: speech, text_field: q}\n")
    msg = one_line_error(write(tmp_path, "t1.yaml", FLAT.replace("input: {modality: text, text_field: q}\n", "")
                               + "include: _t.yaml\n"))
    assert f"{(tmp_path / '_t.yaml').resolve()}:1: field 'input'" in msg and "speech input needs" in msg


def test_templates_are_never_tasks(tmp_path, cli):
    write(tmp_path, "fam/_fam.yaml", "task: not_a_task\ngroup: [fam]\n" + FLAT.split("version: 1\n", 1)[1])
    write(tmp_path, "fam/t1.yaml", "include: _fam.yaml\ntask: t1\nversion: 1\n")
    index = TaskIndex.scan([tmp_path], entry_points=False)
    assert index.files["t1"] == (tmp_path / "fam" / "t1.yaml").resolve()
    assert "not_a_task" not in index.files and not index.broken
    assert index.all_groups()["fam"] == ["t1"]  # a group set by the template counts
    code, out, err = cli("list", "tasks", "--include-path", tmp_path)
    assert code == 0 and "t1" in out and "not_a_task" not in out and "_fam.yaml" not in out
    # `validate` given a family's whole folder names the template as one
    code, out, err = cli("validate", tmp_path / "fam" / "_fam.yaml")
    assert code == 0 and "a template, included by tasks" in out, err


def test_a_broken_include_makes_the_task_unreadable_not_the_listing(tmp_path, cli):
    write(tmp_path, "t1.yaml", "include: _gone.yaml\n" + FLAT)
    index = TaskIndex.scan([tmp_path], entry_points=False)
    assert "t1" not in index.files
    assert "_gone.yaml not found" in index.broken[(tmp_path / "t1.yaml").resolve()]
    code, out, err = cli("list", "tasks", "--include-path", tmp_path)
    assert code == 0 and "unreadable task file" in err and "field 'include'" in err


def test_the_hash_follows_content_not_layout(tmp_path):
    flat = load_task(write(tmp_path, "flat/t1.yaml", FLAT))
    # the same fields over two templates, reordered, with comments: the same task
    write(tmp_path, "split/_a.yaml", "# shared\nscorers:\n  - {name: exact_match, args: {answers_field: a}}\n"
                                     "metrics:\n  - {name: exact_match, aggregation: mean}\n")
    write(tmp_path, "split/_b.yaml", "include: _a.yaml\ninput: {text_field: q, modality: text}\n"
                                     "dataset: {path: data.jsonl, id_field: id}\n")
    split = load_task(write(tmp_path, "split/t1.yaml", "task: t1\ninclude: _b.yaml\ngroup: [g1]\nversion: 1\n"
                                                       "description: a task\n"
                                                       "generation: {max_new_tokens: 8, temperature: 0.0}\n"))
    assert split.config_sha256 == flat.config_sha256 == config_sha256(flat.raw)
    assert split.config_sha256 == config_sha256(json.loads(json.dumps(split.record()["config"])))
    # any real change changes it: in a template, or a value's type, or the version
    changes = [("split/_a.yaml", "aggregation: mean", "aggregation: median"),
               ("flat/t1.yaml", "max_new_tokens: 8", "max_new_tokens: 8.0"),
               ("flat/t1.yaml", "version: 1", "version: 2")]
    for name, old, new in changes:
        path = tmp_path / name
        task = path.parent / "t1.yaml"
        before, original = load_task(task).config_sha256, path.read_text()
        path.write_text(original.replace(old, new))
        assert load_task(task).config_sha256 != before, (name, new)
        path.write_text(original)


def test_cached_answers_are_keyed_by_what_the_task_asks_not_how_it_scores(tmp_path):
    path = tmp_path / "t.yaml"
    base = ("task: t\nversion: 1\ndescription: d\nkind: generate\ndataset: {path: d.jsonl, id_field: id}\n"
            "input: {modality: text, text_field: q}\nprompt: 'Q: {q}'\noutput: text\n"
            "scorers:\n  - {name: exact_match, args: {answer_field: a}}\n"
            "metrics:\n  - {name: acc, aggregation: mean}\n")
    (tmp_path / "d.jsonl").write_text('{"id": "1", "q": "x", "a": "y"}\n')
    path.write_text(base)
    first = load_task(path)
    rescored = base.replace("  - {name: acc, aggregation: mean}", "  - {name: acc, aggregation: median}\n"
                            "  - {name: no_answer, aggregation: mean}").replace("description: d", "description: e")
    path.write_text(rescored)
    assert load_task(path).requests_sha256 == first.requests_sha256
    assert load_task(path).config_sha256 != first.config_sha256
    path.write_text(base.replace("'Q: {q}'", "'Question: {q}'"))
    assert load_task(path).requests_sha256 != first.requests_sha256


def test_shipped_templates_are_each_included_and_shipped_tasks_load():
    tasks_dir = REPO / "tasks"
    templates = {p.resolve() for p in tasks_dir.rglob("_*.yaml")}
    assert templates, "the bundled families share templates"
    index = TaskIndex.scan([], entry_points=False)
    assert not index.broken and not any(is_template(p) for p in index.files.values())
    used = {t for name in index.files for t in index.load(name).includes}
    assert templates == used  # no template left unused


def test_merge_compares_task_content_also_with_results_files_older_than_config_sha256(cli, tmp_path):
    common = ["--model-path", SCRIPTED, "--include-path", TEST_TASKS, "--tasks", "echo_fast",
              "--limit", "4", "--no-progress"]
    shards = []
    for i in range(2):
        assert cli(*common, "--output-dir", tmp_path / str(i), "--shard", f"{i}/2")[0] == 0
        shards.append(next((tmp_path / str(i)).glob("*/*.json")))
    old = json.loads(shards[0].read_text())
    record = old["configs"]["echo_fast"]
    # a results file from before templates kept the task file's byte hash instead
    record["file_sha256"] = "0" * 64
    del record["config_sha256"], record["includes"]
    shards[0].write_text(json.dumps(old))
    code, out, err = cli("merge", tmp_path / "merged.json", *shards)
    assert code == 0, err
    record["config"]["version"] = 2
    shards[0].write_text(json.dumps(old))
    code, out, err = cli("merge", tmp_path / "merged2.json", *shards)
    assert code == 2 and "task 'echo_fast' differs" in err
