"""`--model-args` text is read by the types an adapter's constructor declares, and only by them."""
from __future__ import annotations

import json

import pytest
from conftest import SCRIPTED, TEST_TASKS

from deeptalk_eval.api import SpokenModel
from deeptalk_eval.errors import UsageError
from deeptalk_eval.model_args import bind_model_args, parse_model_args


class Typed(SpokenModel):
    def __init__(self, path: str | None = None, codec: str = "default", steps: int = 4, rate: float = 1.0,
                 fast: bool = False, threads: int | None = None, model: SpokenModel | None = None):
        super().__init__()


def bind(text: str, cls: type = Typed) -> dict:
    return bind_model_args(cls, parse_model_args(text), "typed")


def test_strings_stay_strings():
    # as YAML scalars these were 2024.1 and False
    assert bind("path=2024.10,codec=no") == {"path": "2024.10", "codec": "no"}
    assert bind("codec=  spaced out ") == {"codec": "spaced out"}


def test_numbers_booleans_and_none():
    assert bind("steps=12,rate=2,threads=none") == {"steps": 12, "rate": 2.0, "threads": None}
    assert bind("threads=3,path=none") == {"threads": 3, "path": None}
    for text, value in (("true", True), ("Yes", True), ("1", True), ("on", True),
                        ("false", False), ("no", False), ("0", False), ("OFF", False)):
        assert bind(f"fast={text}") == {"fast": value}


@pytest.mark.parametrize("text, words", [
    ("colour=red", ["model typed has no argument 'colour'", "codec: str", "threads: int | None"]),
    ("steps=2.5", ["model typed: steps='2.5' is not an integer", "fast: bool"]),
    ("rate=fast", ["rate='fast' is not a number"]),
    ("fast=maybe", ["fast='maybe' is not a boolean (true/false)"]),
    ("threads=", ["threads='' is not an integer or none"]),
    ("model=x", ["argument 'model' takes a Python object"]),
])
def test_mistakes_name_the_adapter_and_its_arguments(text, words):
    with pytest.raises(UsageError) as e:
        bind(text)
    for w in words:
        assert w in str(e.value)
    assert "model: " not in str(e.value)  # a Python-only argument is not offered as text


def test_python_callers_pass_typed_values_that_fit():
    assert bind_model_args(Typed, {"steps": 3, "rate": 1, "model": None}, "typed") == {"steps": 3, "rate": 1, "model": None}
    with pytest.raises(UsageError, match="steps=True is not an integer"):
        bind_model_args(Typed, {"steps": True}, "typed")


def test_undeclared_names_of_a_kwargs_adapter_stay_text():
    class Open(SpokenModel):
        def __init__(self, steps: int = 1, **rest):
            super().__init__()

    assert bind("steps=2,anything=2024.10", Open) == {"steps": 2, "anything": "2024.10"}


def test_the_old_batch_size_arg_says_what_to_use_instead():
    from deeptalk_eval.registry import model_class

    with pytest.raises(UsageError, match=r"has no argument 'batch_size' \(requests per generate call: the "
                                         r"--batch-size flag; per loglikelihood pass: loglikelihood_batch_size=N\)"):
        bind_model_args(model_class("base_llm"), {"batch_size": "4"}, "base_llm")


def test_a_run_records_and_builds_with_the_typed_values(cli, tmp_path):
    code, _, err = cli("--model-path", SCRIPTED, "--include-path", TEST_TASKS, "--tasks", "echo_fast", "--limit", "2",
                       "--model-args", "fail_ids=2024.10,delay=0,no_audio=yes", "--output-dir", tmp_path,
                       "--no-progress")
    assert code == 0, err
    (results,) = tmp_path.glob("*/*.json")
    config = json.loads(results.read_text())["config"]
    assert config["model_args"] == {"fail_ids": "2024.10", "delay": 0.0, "no_audio": True}
