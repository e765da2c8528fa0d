"""The LLM-judge scorer: no default judge (a run refuses to start without one, validate
does not need one), the judge named by --judge or the task, its identity kept in the
results, its answers parsed or flagged (never a silent score), and the OpenAI-compatible
backend against a local server."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from conftest import TESTS

from deeptalk_eval.scoring import judge as judge_mod
from deeptalk_eval.scoring.judge import JudgeError, OpenAIChatJudge, parse_rating

JUDGE = f"{TESTS / 'scripted_judge.py'}:ScriptedJudge"
OTHER = f"{TESTS / 'scripted_judge.py'}:OtherJudge"
TASK = """task: judged_echo
group: [judged]
version: 1
dataset: {{path: docs.jsonl, id_field: id}}
input: {{modality: text, text_field: say}}
scorers:
  - {{name: judge_rating, args: {{instruction_field: q{extra}}}, prefix: text_}}
metrics:
  - {{name: text_score, aggregation: mean, on_failure: exclude}}
  - {{name: text_judge_unparsed, aggregation: mean, on_failure: exclude}}
  - {{name: text_no_answer, aggregation: mean, on_failure: one}}
"""
# the scripted model says `say`: the judge rates 5, 2, (unparsed), and the empty reply is a 1 unasked
DOCS = [{"id": "a", "q": "Tell me one thing.", "say": "a good answer"},
        {"id": "b", "q": "Tell me another.", "say": "a plain answer"},
        {"id": "c", "q": "And a third?", "say": "hmm ???"}, {"id": "d", "q": "Say nothing.", "say": ""}]


def judged_task(folder: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "judged_echo.yaml").write_text(TASK.format(extra=extra))
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return folder


def test_parse_rating():
    assert [parse_rating(x) for x in ["4", "Score: 4", "4/5", "4 out of 5", " 5. "]] == [4, 4, 4, 4, 5]
    assert [parse_rating(x) for x in ["3 or 4", "4.5", "five", "6", "", None]] == [None] * 6


def test_a_judged_task_refuses_to_run_without_a_judge(cli, scripted, tmp_path):
    tasks = judged_task(tmp_path / "tasks")
    code, out, err = cli("--model-path", scripted, "--include-path", tasks, "--tasks", "judged_echo",
                         "--output-dir", tmp_path / "out", "--no-progress")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "judged_echo" in err and "needs an LLM judge and none is configured" in err and "--judge" in err
    assert not (tmp_path / "out" / "ScriptedModel").exists() or not any((tmp_path / "out" / "ScriptedModel").glob("*.json"))
    # validate checks the task without any judge
    code, out, err = cli("validate", tasks / "judged_echo.yaml")
    assert code == 0, err


def test_judge_scores_and_identity_in_the_results(cli, scripted, tmp_path):
    tasks = judged_task(tmp_path / "tasks")
    code, out, err = cli("--model-path", scripted, "--include-path", tasks, "--tasks", "judged_echo",
                         "--judge", JUDGE, "--output-dir", tmp_path / "out", "--no-progress", "--log-samples")
    assert code == 0, err
    (path,) = (tmp_path / "out" / "ScriptedModel").glob("*.json")
    res = json.loads(path.read_text())
    m = res["results"]["judged_echo"]
    assert m["text_score"] == pytest.approx((5 + 2 + 1) / 3)  # the unparsed judge answer is left out, not 0
    assert m["text_judge_unparsed"] == pytest.approx(0.25) and m["text_no_answer"] == pytest.approx(0.25)
    ident = res["scoring_info"]["judged_echo"]["judge"]
    assert ident["model"] == "scripted-judge-1" and ident["backend"] == "scripted"
    assert ident["version"] == judge_mod.JUDGE_VERSION and ident["prompt_template"] == "open_1to5_v1"
    assert ident["prompt_text"] == judge_mod.TEMPLATES["open_1to5_v1"]
    assert len(ident["prompt_sha256"]) == 64 and res["config"]["judge"] == JUDGE
    # the judge saw the request and the reply, and was not asked about the empty reply
    asked = judge_mod._JUDGES[JUDGE].prompts
    assert any("Request: Tell me one thing." in p and "Answer: a good answer" in p for p in asked)
    assert not any("Say nothing" in p for p in asked)


def test_task_arg_judge_and_regress_refuses_other_judges(cli, scripted, tmp_path):
    runs = {}
    for name, spec, extra in (("task_arg", None, f", judge: '{JUDGE}'"), ("same", JUDGE, ""), ("other", OTHER, "")):
        tasks = judged_task(tmp_path / name / "tasks", extra)
        args = ["--model-path", scripted, "--include-path", tasks, "--tasks", "judged_echo", "--log-samples",
                "--output-dir", tmp_path / name / "out", "--no-progress"] + (["--judge", spec] if spec else [])
        assert cli(*args)[0] == 0
        (runs[name],) = (tmp_path / name / "out" / "ScriptedModel").glob("*.json")
    assert json.loads(runs["task_arg"].read_text())["scoring_info"]["judged_echo"]["judge"]["spec"] == JUDGE
    code, out, _ = cli("regress", "--baseline", runs["task_arg"], "--candidate", runs["same"], "--gates", "none")
    assert code == 0 and "judged_echo/text_score" in out
    code, out, err = cli("regress", "--baseline", runs["same"], "--candidate", runs["other"], "--gates", "none")
    assert code == 2
    assert "different LLM judges" in err and "judged_echo: judge model 'scripted-judge-1' vs 'scripted-judge-2'" in err
    # not even --allow-asr-mismatch compares them
    assert cli("regress", "--baseline", runs["same"], "--candidate", runs["other"], "--gates", "none",
               "--allow-asr-mismatch")[0] == 2


def test_a_bad_judge_spec_is_a_usage_error(cli, scripted, tmp_path):
    tasks = judged_task(tmp_path / "tasks")
    code, _, err = cli("--model-path", scripted, "--include-path", tasks, "--tasks", "judged_echo",
                       "--judge", "gpt4", "--output-dir", tmp_path / "out", "--no-progress")
    assert code == 2 and "expected openai:MODEL" in err


class _ChatServer(BaseHTTPRequestHandler):
    replies: list = []  # (status, content) per request, in order
    bodies: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append((self.path, self.headers.get("Authorization"), body))
        status, content = type(self).replies.pop(0)
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    server = HTTPServer(("127.0.0.1", 0), _ChatServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _ChatServer.replies, _ChatServer.bodies = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_compatible_judge_against_a_local_server(chat_server, monkeypatch):
    monkeypatch.setenv("DEEPTALK_JUDGE_BASE_URL", chat_server)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    j = OpenAIChatJudge("gpt-4o-mini-2024-07-18", retries=1)
    _ChatServer.replies = [(200, "4")]
    assert j.complete("rate this") == "4"
    path, auth, body = _ChatServer.bodies[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer test-key"
    assert body["model"] == "gpt-4o-mini-2024-07-18" and body["temperature"] == 0.0 and body["n"] == 1
    assert body["messages"] == [{"role": "user", "content": "rate this"}]
    assert j.describe() == {"backend": "openai-chat", "model": "gpt-4o-mini-2024-07-18",
                            "decoding": {"temperature": 0.0, "n": 1, "max_tokens": 8}}
    _ChatServer.replies = [(503, ""), (200, "5")]  # a transient error is retried
    assert j.complete("again") == "5"
    _ChatServer.replies = [(400, ""), (200, "5")]  # a client error is not: the sample fails, named
    with pytest.raises(JudgeError, match="HTTP 400"):
        j.complete("bad")
