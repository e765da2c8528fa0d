"""The CLI contract for user mistakes, checked on the real command in a fresh interpreter:
exit status 2 and ONE line on stderr naming what is wrong and where, never a traceback.
And the other side of it: a bug (in an adapter) is not passed off as a user mistake; it
keeps its traceback and its own exit status."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SCRIPTED, TEST_TASKS, TESTS, run_subprocess

TASK_YAML = """task: t1
version: 1
dataset: {path: docs.jsonl, id_field: id}
input: {modality: text, text_field: q}
scorers:
  - {name: echo_match}
metrics:
  - {name: acc, aggregation: mean}
"""
DOCS = b'{"id": "a", "q": "one", "answers": ["one"]}\n{"id": "b", "q": "two", "answers": ["x"]}\n'


def assert_user_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, one stderr line `deeptalk-eval: error: ...` holding every word, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("deeptalk-eval: error: "), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def task_folder(tmp_path: Path, docs: bytes = DOCS) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "t1.yaml").write_text(TASK_YAML)
    (folder / "docs.jsonl").write_bytes(docs)
    return folder


def scripted_run(tasks: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    return run_subprocess("--model-path", SCRIPTED, "--include-path", tasks, "--tasks", "t1",
                          "--output-dir", out, "--no-progress", *extra)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bound_by_file_modes(*args) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter that obeys file modes: as root (which reads and writes
    past them) without the capabilities that let it, as every other user would run it."""
    if os.geteuid() != 0:
        return run_subprocess(*args)
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: file modes do not bind")
    return subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                           sys.executable, "-m", "deeptalk_eval", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


# -- names and arguments ----------------------------------------------------------------


def test_unknown_model(tmp_path):
    assert_user_error(run_subprocess("--model", "cascad", "--tasks", "all", "--output-dir", tmp_path),
                      "unknown model 'cascad'", "did you mean cascade")


def test_unknown_task(tmp_path):
    proc = run_subprocess("--model-path", SCRIPTED, "--include-path", TEST_TASKS, "--tasks", "echo_fats",
                          "--output-dir", tmp_path)
    assert_user_error(proc, "unknown task or group 'echo_fats'", "echo_fast")
    assert not list(tmp_path.glob("*/*.json"))


@pytest.mark.parametrize("model_args, words", [
    # read by the adapter's declared arguments, which the line lists with their types
    ("colour=red", ["no argument 'colour'", "fail_ids: str", "delay: float", "no_audio: bool"]),
    ("delay=soon", ["model", "delay='soon' is not a number", "fail_ids: str"]),
    ("novalue", ["'novalue' is not key=value"]),
])
def test_bad_model_args(tmp_path, model_args, words):
    proc = run_subprocess("--model-path", SCRIPTED, "--include-path", TEST_TASKS, "--tasks", "echo_fast",
                          "--model-args", model_args, "--output-dir", tmp_path / "out")
    assert_user_error(proc, "--model-args", *words)
    assert not list((tmp_path / "out").glob("*/*.json"))


def test_bad_model_arg_value_of_a_builtin_model(tmp_path):
    proc = run_subprocess("--model", "glm4voice", "--model-args", "url=http://127.0.0.1:1,timeout=soon",
                          "--tasks", "spoken_qa", "--limit", "1", "--output-dir", tmp_path)
    assert_user_error(proc, "model glm4voice: timeout='soon' is not a number", "url: str | None", "timeout: float")


def test_the_old_batch_size_model_arg_says_what_to_use(tmp_path):
    proc = run_subprocess("--model", "deeptalk", "--model-args", "batch_size=4", "--tasks", "spoken_qa",
                          "--limit", "1", "--output-dir", tmp_path)
    assert_user_error(proc, "model deeptalk has no argument 'batch_size'", "the --batch-size flag",
                      "loglikelihood_batch_size=N")


def test_bad_option_value_is_one_line(tmp_path):
    proc = run_subprocess("--model", "cascade", "--limit", "many", "--output-dir", tmp_path)
    assert_user_error(proc, "argument --limit: invalid int value: 'many'", "deeptalk-eval run --help")


# -- a model server that is not there ---------------------------------------------------------


def test_glm4voice_without_a_server(tmp_path):
    port = free_port()
    proc = run_subprocess("--model", "glm4voice", "--model-args", f"url=http://127.0.0.1:{port}",
                          "--tasks", "spoken_qa", "--limit", "1", "--output-dir", tmp_path, "--no-progress")
    assert_user_error(proc, f"http://127.0.0.1:{port}/generate_stream", "model_server.py", "url=")
    assert not list(tmp_path.glob("*/*.json"))  # stopped before the first sample


def test_a_child_run_s_user_error_is_the_run_s(tmp_path):
    """--processes: the server is missing in every child; the parent says it once, exit 2."""
    port = free_port()
    proc = run_subprocess("--model", "glm4voice", "--model-args", f"url=http://127.0.0.1:{port}",
                          "--tasks", "spoken_qa", "--limit", "2", "--output-dir", tmp_path, "--no-progress",
                          "--processes", "2")
    assert_user_error(proc, f"http://127.0.0.1:{port}/generate_stream", "model_server.py", "url=")
    assert not [p for p in tmp_path.glob("*/*.json")]


def test_glm4voice_without_a_url(tmp_path):
    proc = run_subprocess("--model", "glm4voice", "--tasks", "spoken_qa", "--limit", "1", "--output-dir", tmp_path)
    assert_user_error(proc, "no model server URL", "url=http://HOST:10000")


def test_a_set_up_mistake_met_during_generation_stops_the_run(tmp_path):
    """The server answers, but the adapter lacks the text tokenizer every request needs: the
    first request's set-up error ends the run at once (not 1 000 failed samples)."""
    adapter = tmp_path / "no_tokenizer.py"
    adapter.write_text(f"""import sys
sys.path.insert(0, {str(TESTS)!r})
from glm4voice_fake_server import FakeGLM4VoiceServer, WordTokenizer
from deeptalk_eval.models.glm4voice import GLM4Voice


class NoTokenizer(GLM4Voice):
    def __init__(self):
        self.server = FakeGLM4VoiceServer(WordTokenizer(), echo=True).start()
        super().__init__(url=self.server.url)  # no model_path: no text tokenizer

    def close(self):
        self.server.stop()
""")
    proc = run_subprocess("--model-path", f"{adapter}:NoTokenizer", "--include-path", TEST_TASKS,
                          "--tasks", "echo_qa", "--output-dir", tmp_path / "out", "--no-progress")
    assert_user_error(proc, "no text tokenizer", "model_path=")
    assert not list((tmp_path / "out").glob("*/*.json"))


# -- task data files ------------------------------------------------------------------------


def test_data_file_not_utf8_names_file_and_line(tmp_path):
    tasks = task_folder(tmp_path, DOCS + b'{"id": "c", "q": "caf\xe9", "answers": ["x"]}\n')
    line = assert_user_error(scripted_run(tasks, tmp_path / "out"), f"{tasks / 'docs.jsonl'}:3:", "not UTF-8")
    assert "0xe9" in line


def test_data_line_not_json_names_file_and_line(tmp_path):
    tasks = task_folder(tmp_path, DOCS + b'{"id": "c", q}\n')
    assert_user_error(scripted_run(tasks, tmp_path / "out"), f"{tasks / 'docs.jsonl'}:3: not valid JSON")


def test_data_line_not_an_object_names_file_and_line(tmp_path):
    tasks = task_folder(tmp_path, b'["a", "one"]\n' + DOCS)
    assert_user_error(scripted_run(tasks, tmp_path / "out"), f"{tasks / 'docs.jsonl'}:1:", "JSON object")


def test_data_file_unreadable(tmp_path):
    tasks = task_folder(tmp_path)
    (tasks / "docs.jsonl").chmod(0)
    proc = run_bound_by_file_modes("--model-path", SCRIPTED, "--include-path", tasks, "--tasks", "t1",
                                   "--output-dir", tmp_path / "out", "--no-progress")
    assert_user_error(proc, f"{tasks / 'docs.jsonl'}: cannot read data file: Permission denied")


def test_data_file_missing(tmp_path):
    tasks = task_folder(tmp_path)
    (tasks / "docs.jsonl").unlink()
    assert_user_error(scripted_run(tasks, tmp_path / "out"), f"{tasks / 'docs.jsonl'}: data file not found")


def test_task_file_not_utf8(tmp_path):
    tasks = task_folder(tmp_path)
    (tasks / "t1.yaml").write_bytes(TASK_YAML.encode().replace(b"version: 1", b"version: 1\n# \xff"))
    assert_user_error(scripted_run(tasks, tmp_path / "out"), f"{tasks / 't1.yaml'}:3:", "not UTF-8")


def test_two_broken_task_files_are_one_line_naming_both(tmp_path):
    tasks = task_folder(tmp_path)
    (tasks / "t2.yaml").write_text(TASK_YAML.replace("task: t1", "task: t2").replace("id_field: id}", "id_field: [id}"))
    (tasks / "t3.yaml").write_bytes(b"task: t3\nversion: \xff\n")
    assert_user_error(scripted_run(tasks, tmp_path / "out"), f"{tasks / 't2.yaml'}:", "malformed YAML",
                      f"{tasks / 't3.yaml'}:2:", "not UTF-8")


# -- the output folder ------------------------------------------------------------------------


@pytest.mark.parametrize("kind, reason", [("a file", "Not a directory"), ("a read-only folder", "Permission denied")])
def test_output_dir_not_writable_fails_before_the_model(tmp_path, kind, reason):
    parent = tmp_path / kind.replace(" ", "_")
    if kind == "a file":
        parent.write_text("not a folder")
    else:
        parent.mkdir()
        parent.chmod(0o555)
    counter = tmp_path / "calls.txt"
    proc = run_bound_by_file_modes("--model-path", SCRIPTED, "--include-path", TEST_TASKS, "--tasks", "echo_fast",
                                   "--model-args", f"counter={counter}", "--output-dir", parent / "results",
                                   "--no-progress")
    assert_user_error(proc, f"output directory {parent / 'results'}", f"is not writable: {reason}")
    assert not counter.exists()  # no model call happened


def test_rescore_of_a_missing_file(tmp_path):
    assert_user_error(run_subprocess("--rescore", tmp_path / "nope.json", "--output-dir", tmp_path),
                      f"{tmp_path / 'nope.json'}: not a readable results file")


# -- a bug is not a user mistake --------------------------------------------------------------

BUGGY_ADAPTERS = f"""import sys
sys.path.insert(0, {str(TESTS)!r})
import scripted_adapter  # noqa: F401  registers the echo_match scorer of the test tasks
from deeptalk_eval.api import Capabilities, Response, SpokenModel


class BuggyGenerate(SpokenModel):
    capabilities = Capabilities(text_in=True, text_out=True, audio_out=True)

    def generate(self, requests):
        return [Response(text=r.text.uppercased()) for r in requests]  # no such str method


class BuggyInit(SpokenModel):
    def __init__(self, size: int = 3):
        super().__init__(size=size)
        self.layers = [0] * size
        self.width = int(self.layers)  # a TypeError inside the constructor: no --model-args mistake
"""


@pytest.mark.parametrize("adapter, model_args, error, exit_code", [
    # each sample fails (recorded), every sample failed -> exit 1; the first one's traceback is shown
    ("BuggyGenerate", "", "AttributeError: 'str' object has no attribute 'uppercased'", 1),
    # an exception escaping the constructor is Python's own, well-typed arguments or not: traceback, exit 1
    ("BuggyInit", "", "TypeError: int() argument must be", 1),
    ("BuggyInit", "size=4", "TypeError: int() argument must be", 1),
])
def test_a_bug_keeps_its_traceback(tmp_path, adapter, model_args, error, exit_code):
    path = tmp_path / "buggy.py"
    path.write_text(BUGGY_ADAPTERS)
    proc = run_subprocess("--model-path", f"{path}:{adapter}", "--include-path", TEST_TASKS, "--tasks", "echo_fast",
                          "--model-args", model_args, "--limit", "3", "--output-dir", tmp_path / "out",
                          "--no-progress")
    assert proc.returncode == exit_code, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert f'File "{path}"' in proc.stderr and error in proc.stderr  # where the bug is
    assert "deeptalk-eval: error:" not in proc.stderr
    if adapter == "BuggyGenerate":  # the run went on and recorded every failure
        (results,) = (tmp_path / "out").glob("*/*.json")
        m = json.loads(results.read_text())["results"]["echo_fast"]
        assert m["samples"] == 3 and m["failed"] == 3
