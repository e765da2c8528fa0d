"""BaseLLM on the real SmolLM2-135M-Instruct: lm-eval parity, deterministic generation."""
from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from deeptalk_eval.api import Audio, GenerationOptions, Request, Turn, UnsupportedRequest
from deeptalk_eval.errors import UsageError
from deeptalk_eval.models.text_llm import BaseLLM

PAIRS = [
    ("The capital of France is", " Paris"),
    ("The capital of France is ", "Paris."),  # trailing space moves to the continuation
    ("Question: What is two plus two?\nAnswer:", " four"),
    ("", "Hello world"),  # empty context: conditioned on the prefix token
    ("Water boils at 100 degrees", " Celsius at sea level"),
]
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 6, "Short text."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def loaded():
    from deeptalk_common.base_llm import load_base_llm

    torch.manual_seed(0)
    return load_base_llm("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def llm(loaded):
    model, tok = loaded
    return BaseLLM(model=model, tokenizer=tok, loglikelihood_batch_size=3)


def _hflm(model, tok, **kw):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tok, batch_size=2, device="cpu", **kw)


def _instances(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihood_matches_lm_eval_hflm(loaded, llm):
    model, tok = loaded
    ref = _hflm(model, tok).loglikelihood(_instances("loglikelihood", PAIRS), disable_tqdm=True)
    ours = llm.loglikelihood(PAIRS)
    for (ctx, cont), (lp_ref, g_ref), (lp, g) in zip(PAIRS, ref, ours):
        assert lp == pytest.approx(lp_ref, abs=1e-3), (ctx, cont)
        assert g == g_ref, (ctx, cont)
    assert all(lp < 0 for lp, _ in ours)
    # A plausible continuation beats an implausible one (the model is real, not random).
    paris, = llm.loglikelihood([("The capital of France is", " Paris")])
    banana, = llm.loglikelihood([("The capital of France is", " banana")])
    assert paris[0] > banana[0] + 2


def test_rolling_loglikelihood_matches_lm_eval_with_left_truncation(loaded):
    model, tok = loaded
    # A short max_length forces several rolling windows (and left truncation of their context).
    ours = BaseLLM(model=model, tokenizer=tok, max_length=16, loglikelihood_batch_size=4).loglikelihood_rolling(TEXTS)
    ref = _hflm(model, tok, max_length=16).loglikelihood_rolling(
        _instances("loglikelihood_rolling", [(t,) for t in TEXTS]), disable_tqdm=True)
    assert ours == pytest.approx(ref, abs=2e-3)
    # Truncation drops context: the 16-token score of a long continuation differs from the full one.
    full, = BaseLLM(model=model, tokenizer=tok).loglikelihood([(TEXTS[0], " The end.")])
    short, = BaseLLM(model=model, tokenizer=tok, max_length=16).loglikelihood([(TEXTS[0], " The end.")])
    assert not math.isclose(full[0], short[0], abs_tol=1e-3)


def test_one_token_options_after_one_context_share_a_row(loaded):
    """A multiple-choice question's options " A" ... " D" after the same context: one model row
    for the four, the same scores as lm-eval's HFLM and as each asked alone."""
    model, tok = loaded
    ctx = "Question: Which planet is known as the red planet?\nA. Venus\nB. Mars\nC. Jupiter\nD. Saturn\nAnswer:"
    pairs = [(ctx, f" {c}") for c in "ABCD"] + [("The capital of France is", " Paris")]
    assert all(len(tok.encode(c, add_special_tokens=False)) == 1 for _, c in pairs[:4])
    rows = []
    hook = model.register_forward_hook(lambda m, args, kw, out: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        shared = BaseLLM(model=model, tokenizer=tok, loglikelihood_batch_size=8).loglikelihood(pairs)
    finally:
        hook.remove()
    assert rows == [2]                       # the four options in one row, Paris in the other
    alone = [BaseLLM(model=model, tokenizer=tok).loglikelihood([p])[0] for p in pairs]
    ref = _hflm(model, tok).loglikelihood(_instances("loglikelihood", pairs), disable_tqdm=True)
    assert [a for a, _ in shared] == pytest.approx([a for a, _ in alone], abs=1e-4)
    assert [a for a, _ in shared] == pytest.approx([a for a, _ in ref], abs=1e-3)
    assert [g for _, g in shared] == [g for _, g in ref]
    assert len({round(a, 3) for a, _ in shared[:4]}) == 4  # each option read its own token


def test_scores_do_not_depend_on_batch_size(loaded):
    model, tok = loaded
    one = BaseLLM(model=model, tokenizer=tok, loglikelihood_batch_size=1).loglikelihood(PAIRS)
    many = BaseLLM(model=model, tokenizer=tok, loglikelihood_batch_size=8).loglikelihood(PAIRS)
    assert [a for a, _ in one] == pytest.approx([a for a, _ in many], abs=1e-4)


def test_greedy_generation_is_deterministic_and_records_prompt(loaded, llm):
    model, tok = loaded
    req = Request(id="g", text="What is the capital of France?", options=GenerationOptions(max_new_tokens=24))
    a, b = llm.generate([req, req])
    assert a.text == b.text and a.text.strip()
    assert "Paris" in a.text
    assert a.prompt == tok.apply_chat_template([{"role": "user", "content": req.text}], tokenize=False,
                                               add_generation_prompt=True)
    # Same tokens as a plain transformers greedy decode of the same prompt.
    ids = tok(a.prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=llm._eos_ids(),
                             pad_token_id=llm._eos_ids()[0])
    assert a.text == tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    assert a.tokens["prompt"] == ids.shape[1] and 0 < a.tokens["completion"] <= 24
    (alone,) = llm.generate([req])  # one request: the streaming path, timed token by token
    assert alone.text == a.text and alone.tokens == a.tokens
    assert 0 < alone.timings["first_token"] <= alone.timings["first_text"] <= alone.timings["total"]


QUESTIONS = [
    "What is the capital of France?",
    "Name three colours of the rainbow, separated by commas.",
    "Who wrote the play Romeo and Juliet? Answer briefly, and then explain in two sentences why it is famous.",
    "2+2?",
    "List the planets of the solar system, one per line.",
    "Write a long essay about the history of Rome.",
    "Say yes.",
]


@pytest.mark.parametrize("stop", [(), (", ", "\n")])
def test_batched_greedy_answers_are_the_one_by_one_answers(loaded, stop):
    # Prompts of different lengths (left padding), fewer rows than requests (several batches),
    # answers that end by EOS, by the budget and (with stop strings) by a stop string.
    model, tok = loaded
    llm = BaseLLM(model=model, tokenizer=tok, rows=3)
    reqs = [Request(id=f"b{i}", text=q, system="Answer briefly." if i % 2 else None,
                    options=GenerationOptions(max_new_tokens=24, stop=stop)) for i, q in enumerate(QUESTIONS)]
    steps = []
    hook = model.register_forward_hook(lambda mod, args, kw, out: steps.append(kw["input_ids"].shape[0]),
                                       with_kwargs=True)
    try:
        batched = llm.generate(reqs)
    finally:
        hook.remove()
    assert max(steps) == 3 and len(steps) <= 3 * 25  # 3 batches of at most 3 rows, <= 1 + 24 passes each
    alone = [llm.generate([r])[0] for r in reqs]
    for a, b in zip(alone, batched):
        assert (b.text, b.prompt, b.extra["stop_reason"]) == (a.text, a.prompt, a.extra["stop_reason"])
        assert b.extra["batch"] <= 3
        if b.extra["stop_reason"] == "stop_string":
            # a stream ends a token or more after its stop string (when its reader saw it): never fewer
            assert 0 < b.tokens["completion"] <= a.tokens["completion"]
        else:
            assert b.tokens == a.tokens
    reasons = {b.extra["stop_reason"] for b in batched}
    assert reasons == ({"eos", "max_new_tokens", "stop_string"} if stop else {"eos", "max_new_tokens"})


def test_sampled_requests_are_not_batched(llm):
    opts = GenerationOptions(max_new_tokens=6, temperature=1.0, seed=5)
    reqs = [Request(id="x", text="Tell me a word.", options=opts), Request(id="y", text="Say hi.")]
    out = llm.generate(reqs)
    assert out[0].extra["sampled"] is True and "batch" not in out[0].extra
    assert out[1].text == llm.generate([reqs[1]])[0].text


def test_stop_strings_system_and_history(llm):
    base = Request(id="s", text="List three colours, one per line.", system="You are terse.",
                   history=[Turn("user", text="Hi"), Turn("assistant", text="Hello!")],
                   options=GenerationOptions(max_new_tokens=20))
    full, = llm.generate([base])
    assert "You are terse." in full.prompt and "Hello!" in full.prompt
    assert "," in full.text
    stopped, = llm.generate([Request(**{**base.__dict__, "options": GenerationOptions(max_new_tokens=20, stop=(", ", "zzz"))})])
    assert stopped.text == full.text[: full.text.index(", ")]
    assert stopped.extra["stop_reason"] == "stop_string"


def test_seeded_sampling_repeats(llm):
    opts = GenerationOptions(max_new_tokens=8, temperature=1.0, top_p=0.95, seed=123)
    req = Request(id="r", text="Tell me a word.", options=opts)
    a, b = llm.generate([req, req])
    assert a.text == b.text and a.extra["sampled"] is True and a.extra["seed"] == 123


def test_stream_events_are_timed_in_order(llm):
    events = list(llm.stream(Request(id="t", text="Say hello.", options=GenerationOptions(max_new_tokens=12))))
    names = [e.name or e.kind for e in events]
    assert names[0] == "prefill_start" and names[1] == "first_token" and names[-2:] == ["last_token", "end"]
    texts = [e.t for e in events if e.kind == "text"]
    assert texts and texts == sorted(texts)
    marks = {e.name: e.t for e in events if e.kind == "mark"}
    assert marks["prefill_start"] < marks["first_token"] <= marks["last_token"] <= events[-1].t
    assert texts[0] >= marks["first_token"]


def test_closing_a_stream_stops_generation(llm):
    steps = []
    hook = llm.model.register_forward_hook(lambda *_: steps.append(1))  # one forward pass per token
    req = Request(id="c", text="Write a long essay about the history of Rome.", options=GenerationOptions(max_new_tokens=300))
    try:
        events = llm.stream(req)
        next(e for e in events if e.kind == "text")
        events.close()  # the listener went away: the background generate() must end, not run to 300 tokens
    finally:
        hook.remove()
    assert 0 < len(steps) < 60


def test_the_end_event_carries_what_generate_records(llm):
    req = Request(id="e", text="Say hello.", options=GenerationOptions(max_new_tokens=6))
    end = list(llm.stream(req))[-1]
    (resp,) = llm.generate([req])
    assert end.kind == "end" and end.info["prompt"] == resp.prompt and end.info["tokens"] == resp.tokens
    assert resp.tokens["prompt"] > 0 and 0 < resp.tokens["completion"] <= 6
    reason = "max_new_tokens" if resp.tokens["completion"] == 6 else "eos"
    assert resp.extra == {"stop_reason": reason, "seed": None, "sampled": False}


def test_the_stop_reason_says_whether_the_budget_ended_the_answer(llm):
    capped, = llm.generate([Request(id="long", text="Write a long essay about the history of Rome.",
                                    options=GenerationOptions(max_new_tokens=5))])
    ended, = llm.generate([Request(id="short", text="Answer with one word: what colour is the sky?",
                                   options=GenerationOptions(max_new_tokens=40))])
    assert capped.extra["stop_reason"] == "max_new_tokens" and capped.tokens["completion"] == 5
    assert ended.extra["stop_reason"] == "eos" and ended.tokens["completion"] < 40


def test_bad_input_is_refused(llm):
    with pytest.raises(UnsupportedRequest, match="request a: base_llm takes text only"):
        llm.generate([Request(id="a", audio=Audio([0.0] * 160, 16000))])
    with pytest.raises(UnsupportedRequest, match="text only, not speech"):
        llm.generate([Request(id="b", text="hi", output_modality="speech")])
    with pytest.raises(ValueError, match="dtype='float8'"):
        BaseLLM(dtype="float8", model=llm.model, tokenizer=llm.tokenizer)
    with pytest.raises(ValueError, match="loglikelihood_batch_size=0 must be >= 1"):
        BaseLLM(loglikelihood_batch_size=0, model=llm.model, tokenizer=llm.tokenizer)


def test_fingerprint_tracks_weights_and_options(loaded, llm):
    model, tok = loaded
    other = BaseLLM(model=model, tokenizer=tok, max_length=64)
    assert llm.weights_sha256() == other.weights_sha256()  # same weights, hashed independently
    assert llm.fingerprint() != other.fingerprint()  # different options
    # the scoring batch changes how it runs, not what it answers
    assert BaseLLM(model=model, tokenizer=tok, loglikelihood_batch_size=5).fingerprint() == llm.fingerprint()
    assert BaseLLM(model=model, tokenizer=tok, rows=2).fingerprint() == llm.fingerprint()
    for bad in (0, True, "4"):
        with pytest.raises(UsageError, match=f"model arg rows must be a whole number >= 1, got {bad!r}"):
            BaseLLM(model=model, tokenizer=tok, rows=bad)
    assert llm.describe()["parameters"] == sum(p.numel() for p in model.parameters())


def test_a_stalled_generation_is_a_named_timeout():
    from deeptalk_eval.models.text_llm import _named_timeout, _TimedStreamer

    streamer = _TimedStreamer(None, timeout=0.05)  # nothing will ever be produced
    with pytest.raises(TimeoutError, match="request q7: the LLM produced no token for 0.05 s"):
        list(_named_timeout(streamer, "q7"))
