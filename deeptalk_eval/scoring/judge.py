"""LLM judges for open-ended answers: one small interface, its identity kept with every figure.

A judge is anything with `complete(prompt) -> str` and `describe() -> {"backend", "model",
"decoding"}` (subclass `Judge`). It is named by a spec string, given as `--judge SPEC` on
the command line (wins) or as the scorer arg `judge:` in a task file:

- `openai:MODEL` — an OpenAI-compatible chat-completions server (OpenAI itself, vLLM,
  llama.cpp's server, ...): base URL from `DEEPTALK_JUDGE_BASE_URL` (default
  https://api.openai.com/v1), key from `OPENAI_API_KEY` when set. Greedy (temperature 0),
  one completion, up to 8 new tokens; transient HTTP errors are retried twice, then the
  sample fails with the error (never a silent score).
- `hf:NAME_OR_PATH` — a local transformers causal LM with a chat template, greedy: a model
  folder, a hub id (online), or `smollm2-135m-instruct`, the one LLM that ships offline.
- `module:Class` or `path/file.py:Class` — your own `Judge` subclass, built without arguments.

There is no default judge. The only model that runs offline here is SmolLM2-135M-Instruct,
far too small to grade answers (`hf:smollm2-135m-instruct` rated 11 of 12 answers "1",
right and wrong ones alike, and left one unparsed; docs/tasks.md), so a task
that needs a judge refuses to run until one is named (`preflight`, called by the runner
before any model loads) — `deeptalk-eval validate` does not need one.

What the results keep (`scoring_info[task].judge`): backend, model, decoding, the prompt
template's name, full text and sha256, and `JUDGE_VERSION` (this module's calling and
parsing rules). `deeptalk-eval regress` refuses to compare two runs whose judge model,
prompt hash or version differ.

Scorer `judge_rating`: the judge rates a reply 1–5 with the template `open_1to5_v1` (below;
our wording, not VoiceBench's, whose judge is gpt-4o-mini at temperature 0.5 with three
samples — figures from the two are not the same measurement). An empty reply is rated 1
without asking the judge (`no_answer` = 1). A judge answer that is not exactly one digit
1–5 ("4", "Score: 4", "4/5" are read; "3 or 4" is not) gives no score (`score` None: the
task's metric excludes it) and `judge_unparsed` = 1, reported beside the score.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any

from deeptalk_eval.errors import UsageError
from deeptalk_eval.scoring.base import SampleView, ScoringContext, register_scorer

JUDGE_VERSION = "deeptalk_judge_v1"
TEMPLATES: dict[str, str] = {
    "open_1to5_v1": (
        "You are grading a voice assistant. A user spoke a request and the assistant answered. "
        "The request below is a transcript of the user's speech; the answer may be a transcript "
        "of the assistant's speech, so ignore spelling, punctuation and formatting.\n\n"
        "Request: {instruction}\n\n"
        "Answer: {response}\n\n"
        "Rate the answer from 1 to 5:\n"
        "1 - off-topic, wrong, or no real answer;\n"
        "2 - on-topic but mostly wrong or badly incomplete;\n"
        "3 - relevant and mostly right, but padded, vague or missing parts;\n"
        "4 - relevant, right and to the point;\n"
        "5 - right, complete and concise: as good as a spoken answer can be.\n\n"
        "Reply with the digit only."
    ),
}
DEFAULT_BASE_URL = "https://api.openai.com/v1"
NO_JUDGE = ("needs an LLM judge and none is configured: give --judge SPEC (openai:MODEL for an "
            "OpenAI-compatible server, hf:PATH for a local transformers model, or module:Class) or "
            "`judge: SPEC` in the scorer's args; no capable judge ships offline")


class JudgeError(RuntimeError):
    """The judge could not answer (server error, bad reply shape): the sample fails, named."""


class Judge:
    """The judge interface: `complete` one prompt, `describe` what answers."""

    backend = "custom"
    model = "?"
    decoding: dict[str, Any] = {}

    def complete(self, prompt: str) -> str:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "decoding": dict(self.decoding)}


class OpenAIChatJudge(Judge):
    backend = "openai-chat"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 2):
        self.model = model
        self.base_url = (base_url or os.environ.get("DEEPTALK_JUDGE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout, self.retries = timeout, retries
        self.decoding = {"temperature": 0.0, "n": 1, "max_tokens": 8}

    def complete(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           **self.decoding}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}/chat/completions"
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    data = json.loads(r.read().decode("utf-8"))
                return str(data["choices"][0]["message"]["content"])
            except urllib.error.HTTPError as e:
                if e.code < 500 or attempt == self.retries:
                    raise JudgeError(f"judge {self.model} at {url}: HTTP {e.code} {e.reason}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.retries:
                    raise JudgeError(f"judge {self.model} at {url}: {getattr(e, 'reason', e)}") from None
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise JudgeError(f"judge {self.model} at {url}: unexpected reply ({type(e).__name__}: {e})") from None
            time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")


class HFJudge(Judge):
    backend = "transformers"

    def __init__(self, name_or_path: str, max_new_tokens: int = 8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from deeptalk_common.base_llm import BUNDLED_GGUF, resolve_base

        self.model = name_or_path
        where = resolve_base(name_or_path) if name_or_path in BUNDLED_GGUF else name_or_path
        self._tok = AutoTokenizer.from_pretrained(where)
        self._lm = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32).eval()
        self._torch = torch
        self.decoding = {"temperature": 0.0, "max_new_tokens": max_new_tokens}

    def complete(self, prompt: str) -> str:
        ids = self._tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt")
        with self._torch.no_grad():
            out = self._lm.generate(ids, attention_mask=self._torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=self.decoding["max_new_tokens"],
                                    pad_token_id=self._tok.pad_token_id or self._tok.eos_token_id)
        return self._tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


_JUDGES: dict[str, Judge] = {}


def check_spec(spec: Any) -> str:
    """A judge spec's syntax (no model is loaded); UsageError naming what is wrong."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"judge spec must be a non-empty string, got {spec!r}")
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or not kind:
        raise UsageError(f"judge {spec!r}: expected openai:MODEL, hf:NAME_OR_PATH or module:Class")
    return spec


def make_judge(spec: str) -> Judge:
    """The judge for a spec, built once per process."""
    check_spec(spec)
    if spec not in _JUDGES:
        kind, _, rest = spec.partition(":")
        if kind == "openai":
            judge: Judge = OpenAIChatJudge(rest)
        elif kind == "hf":
            judge = HFJudge(rest)
        else:
            from deeptalk_eval.registry import import_object

            cls = import_object(spec, "judge")
            judge = cls() if isinstance(cls, type) else cls
            if not callable(getattr(judge, "complete", None)) or not callable(getattr(judge, "describe", None)):
                raise UsageError(f"judge {spec!r}: needs complete(prompt) and describe() (subclass "
                                 f"deeptalk_eval.scoring.judge.Judge)")
        _JUDGES[spec] = judge
    return _JUDGES[spec]


def identity(spec: str, judge: Judge, template: str) -> dict[str, Any]:
    text = TEMPLATES[template]
    d = judge.describe()
    return {"spec": spec, "backend": d.get("backend"), "model": d.get("model"), "decoding": d.get("decoding"),
            "prompt_template": template, "prompt_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "prompt_text": text, "version": JUDGE_VERSION}


def fill(template: str, **fields: str) -> str:
    """The template with {name} placeholders replaced (no str.format: replies hold braces)."""
    text = TEMPLATES[template]
    for k, v in fields.items():
        text = text.replace("{" + k + "}", v)
    return text


def parse_rating(text: str | None, low: int = 1, high: int = 5) -> int | None:
    """The one rating in `text` ("4", "Score: 4", "4/5", "4 out of 5"), else None."""
    if not text:
        return None
    t = re.sub(rf"(?:/|\bout\s+of)\s*{high}\b", " ", text)
    nums = set(re.findall(r"\d+(?:\.\d+)?", t))
    if len(nums) != 1:
        return None
    n = nums.pop()
    return int(n) if n.isdigit() and low <= int(n) <= high else None


def preflight(args: dict[str, Any], judge: str | None) -> None:
    """Before a run: a judge must be named (--judge or the scorer arg), in a valid spec."""
    spec = judge or args.get("judge")
    if spec is None:
        raise UsageError(NO_JUDGE)
    check_spec(spec)
    if args.get("template", "open_1to5_v1") not in TEMPLATES:
        raise UsageError(f"unknown judge template {args.get('template')!r}; known: {sorted(TEMPLATES)}")


@register_scorer("judge_rating")
def judge_rating(sample: SampleView, ctx: ScoringContext, instruction_field: str = "prompt",
                 template: str = "open_1to5_v1", judge: str | None = None) -> dict[str, float | None]:
    """An LLM judge's 1–5 rating of the reply to `instruction_field` (module docstring):
    score, judge_unparsed, no_answer."""
    from deeptalk_eval.scoring.scorers import _field, _has_text

    if template not in TEMPLATES:
        raise ValueError(f"unknown judge template {template!r}; known: {sorted(TEMPLATES)}")
    instruction = str(_field(sample, ctx, instruction_field))
    if not _has_text(sample.channel_text):
        return {"score": 1.0, "judge_unparsed": 0.0, "no_answer": 1.0}
    spec = ctx.judge or judge
    if spec is None:
        raise UsageError(f"scorer judge_rating {NO_JUDGE}")
    j = make_judge(spec)
    ident = identity(spec, j, template)
    known = ctx.info.setdefault("judge", ident)
    if known != ident:
        raise ValueError(f"one judge per task: {known['spec']}/{known['prompt_template']} and "
                         f"{spec}/{template} both score this task")
    reply = j.complete(fill(template, instruction=instruction, response=sample.channel_text.strip()))
    rating = parse_rating(reply)
    return {"score": None if rating is None else float(rating), "judge_unparsed": float(rating is None),
            "no_answer": 0.0}


judge_rating.preflight = preflight  # the runner calls it before a run (see deeptalk_eval.run.plan.prepare)
