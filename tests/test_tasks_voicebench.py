"""The VoiceBench tasks (tasks/voicebench/): online only, out of `all`, each validated
offline against its documented example doc; the hub loader (several splits, the assumed
fields) checked on a stand-in for `datasets`, and a field the data lacks named in one line."""
import sys
import types

import numpy as np
import pytest
from conftest import REPO

from deeptalk_eval.registry import TaskIndex
from deeptalk_eval.task_config import load_task
from deeptalk_eval.task_docs import load_docs
from deeptalk_eval.task_yaml import TaskConfigError, is_template

FOLDER = REPO / "tasks" / "voicebench"
TASKS = sorted(p for p in FOLDER.glob("*.yaml") if not is_template(p))
SETS = {"alpacaeval": "alpacaeval_full", "commoneval": "commoneval", "wildvoice": "wildvoice", "sd_qa": "sd-qa",
        "openbookqa": "openbookqa", "mmsu": "mmsu", "bbh": "bbh", "ifeval": "ifeval", "advbench": "advbench"}


def test_the_nine_sets_are_online_only_and_not_in_all():
    assert sorted(p.stem for p in TASKS) == sorted(f"voicebench_{s}" for s in SETS)
    index = TaskIndex.scan()
    groups = index.all_groups()
    assert groups["voicebench"] == sorted(f"voicebench_{s}" for s in SETS)
    assert not any(t.startswith("voicebench") for t in groups["all"])
    for path in TASKS:
        task = load_task(path)
        assert task.data_path is None and task.hub["path"] == "hlt-lab/voicebench"
        assert task.hub["name"] == SETS[path.stem.removeprefix("voicebench_")]
        assert task.example is not None and task.input_modality == "speech" and task.output == "both"
        # both channels scored: the text channel and Whisper's transcript of the speech channel
        prefixes = {(s.channel, s.prefix) for s in task.scorers}
        assert {("text", "text_"), ("speech", "speech_")} <= prefixes
        assert any(m.name.startswith("text_") for m in task.metrics)
        assert any(m.name.startswith("speech_") for m in task.metrics)


def test_validate_passes_on_every_task_offline(cli):
    code, out, err = cli("validate", *sorted(FOLDER.glob("*.yaml")))  # as `validate tasks/voicebench/*.yaml`
    assert code == 0, err
    for path in TASKS:
        assert str(path) in out
    assert f"{FOLDER / '_voicebench.yaml'}: a template" in out
    assert out.count("checked against dataset.example") == len(TASKS)


def fake_datasets(monkeypatch, data: dict):
    """`datasets.load_dataset` served from memory: data[config] is {split: [rows]}."""
    calls = []

    def load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split))
        assert path == "hlt-lab/voicebench"
        return data[name] if split is None else data[name][split]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


AUDIO = {"array": np.zeros(1600, dtype=np.float32), "sampling_rate": 16000}


def test_multi_split_sets_load_every_split_with_split_ids(monkeypatch):
    calls = fake_datasets(monkeypatch, {"sd-qa": {
        "aus": [{"audio": AUDIO, "prompt": "capital of kenya?", "reference": "Nairobi"}],
        "usa": [{"audio": AUDIO, "prompt": "capital of kenya?", "reference": "Nairobi"},
                {"audio": AUDIO, "prompt": "who wrote hamlet?", "reference": ["Shakespeare", "William Shakespeare"]}],
    }})
    docs = load_docs(load_task(FOLDER / "voicebench_sd_qa.yaml"), online=True)
    assert calls == [("hlt-lab/voicebench", "sd-qa", None)]  # every split of the config
    assert [d["id"] for d in docs] == ["aus/00000", "usa/00000", "usa/00001"]
    assert [d["hub_split"] for d in docs] == ["aus", "usa", "usa"]
    assert docs[2]["answers"] == ["Shakespeare", "William Shakespeare"]


def test_mcq_bbh_ifeval_docs(monkeypatch):
    fake_datasets(monkeypatch, {
        "openbookqa": {"test": [{"audio": AUDIO, "prompt": "Which conducts heat? A. wool. B. steel. C. paper. D. cotton.",
                                 "reference": "B"}]},
        "bbh": {"test": [{"audio": AUDIO, "id": "web_of_lies_3", "prompt": "Does Ann tell the truth?", "reference": "No"}]},
        "ifeval": {"test": [{"audio": AUDIO, "key": 17, "prompt": "No commas please.",
                             "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"num_words": None}]}]},
    })
    (mcq,) = load_docs(load_task(FOLDER / "voicebench_openbookqa.yaml"), online=True)
    assert mcq["options"] == ["wool", "steel", "paper", "cotton"] and mcq["id"] == "00000"
    (bbh,) = load_docs(load_task(FOLDER / "voicebench_bbh.yaml"), online=True)
    assert (bbh["id"], bbh["subtask"]) == ("web_of_lies_3", "web_of_lies")
    (ife,) = load_docs(load_task(FOLDER / "voicebench_ifeval.yaml"), online=True)
    assert ife["id"] == "17"


def test_a_field_the_data_lacks_is_named_in_one_line(cli, monkeypatch):
    fake_datasets(monkeypatch, {"openbookqa": {"test": [{"audio": AUDIO, "prompt": "Which? A. x. B. y. C. z. D. w.",
                                                         "answer": "B"}]}})
    with pytest.raises(TaskConfigError, match="has no field 'reference', which the mcq tasks assume"):
        load_docs(load_task(FOLDER / "voicebench_openbookqa.yaml"), online=True)
    code, out, err = cli("validate", "--online", FOLDER / "voicebench_openbookqa.yaml")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'reference'" in err and "['answer', 'audio', 'prompt']" in err


def test_validate_online_reads_the_first_audio(cli, monkeypatch):
    fake_datasets(monkeypatch, {"advbench": {"test": [{"audio": AUDIO, "prompt": "Do something bad."}]}})
    code, out, err = cli("validate", "--online", FOLDER / "voicebench_advbench.yaml")
    assert code == 0, err
    assert "1 samples" in out and "first audio: 0.10 s at 16000 Hz" in out


def test_example_docs_must_match_the_task(cli, tmp_path):
    """validate catches an example (so a task) whose fields the scorers or metrics do not find."""
    text = (FOLDER / "voicebench_openbookqa.yaml").read_text()
    for f in [FOLDER / "hooks.py", *FOLDER.glob("_*.yaml")]:
        (tmp_path / f.name).write_text(f.read_text())
    bad = tmp_path / "bad_gold.yaml"
    bad.write_text(text.replace("    reference: B\n", "    reference: E\n"))
    code, _, err = cli("validate", bad)
    assert code == 2 and "scorers[0]" in err and "'E'" in err
    template = tmp_path / "_voicebench_mcq.yaml"  # the task's metrics are its template's
    template.write_text(template.read_text().replace("name: text_unparsed,", "name: text_unparsable,"))
    bad = tmp_path / "bad_metric.yaml"
    bad.write_text(text)
    code, _, err = cli("validate", bad)
    assert code == 2 and "text_unparsable" in err and "produced by no scorer" in err


def test_reserved_prefix_is_not_a_task_or_group_name(tmp_path):
    text = (FOLDER / "voicebench_advbench.yaml").read_text()
    for f in [FOLDER / "hooks.py", *FOLDER.glob("_*.yaml")]:
        (tmp_path / f.name).write_text(f.read_text())
    # the group comes from the template: the task file overrides it
    for bad in (text.replace("task: voicebench_advbench", "task: 'reported:x'"), text + "group: ['reported:x']\n"):
        p = tmp_path / "t.yaml"
        p.write_text(bad)
        with pytest.raises(TaskConfigError, match="may not start with 'reported:'"):
            load_task(p)
