"""Heard words in written form: the capitals and the end mark, chosen by the LLM.

    "what is the capital of angola"  (a CTC piece head writes lower case, no punctuation)
        -> the end "?", "." or none: the likeliest as a whole user turn (the chat template's
           start and end around it), the first letter a capital
        -> each further word a capital or not: the likelier after the words before it
        -> "What is the capital of Angola?"

Why: the base LLM answers the 200 development questions it reads in the head's form
0.41, written as typed 0.50; most of the gap is the end mark and the capitals
(docs/training.md "The written form of what was heard"). The LLM itself knows which words
are names and whether the sentence asks: no rules of English here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from deeptalk.speech.lexicon_decode import sequence_logprobs

TurnScorer = Callable[..., list[float]]  # (texts, whole=True) -> log-probabilities
FORMS = ("plain", "sentence", "true_case")


@dataclass
class WrittenForm:
    form: str = "true_case"  # "plain": as heard; "sentence": first capital + end mark; "true_case": and names
    end_marks: tuple[str, ...] = ("?", ".", "")
    passes: int = 2

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"written form must be one of {FORMS}, got {self.form!r}")


def _capital(word: str) -> str:
    return word[:1].upper() + word[1:]


def written(text: str, score: TurnScorer, cfg: WrittenForm | None = None) -> str:
    """`text` (lower-case words) in the written form the LLM finds likeliest as a user turn."""
    cfg = cfg or WrittenForm()
    words = text.split()
    if cfg.form == "plain" or not words:
        return text
    first = [_capital(words[0])] + words[1:]
    ends = [" ".join(first) + m for m in cfg.end_marks]
    best_end = max(zip(score(ends), cfg.end_marks), key=lambda s: s[0])[1]
    if cfg.form == "sentence" or len(words) == 1:
        return " ".join(first) + best_end
    # each further word in capitals or not, whichever the LLM finds likelier after the words
    # before it (what follows is not asked: lower-case words after a name made the name itself
    # look unlikely, "between europe and africa"); a second pass reads the decided words. One
    # batch a pass, not a forward per word
    out = list(first)
    for _ in range(cfg.passes):
        todo = [i for i in range(1, len(out)) if out[i] != _capital(out[i])]
        if not todo:
            break
        rows = [" ".join(out[:i] + [w]) for i in todo for w in (out[i], _capital(out[i]))]
        scores = score(rows, whole=False)
        changed = [i for k, i in enumerate(todo) if scores[2 * k + 1] > scores[2 * k]]
        if not changed:
            break
        for i in changed:
            out[i] = _capital(out[i])
    return " ".join(out) + best_end


def turn_scorer(model, tokenizer) -> TurnScorer:
    """Texts -> the causal LM's log-probability of each as a whole user turn: after its chat
    template's start ("<|im_start|>user\\n"), up to and including the turn's end; read with a
    leading space, as a CTC head hands the words over. Without a chat template: BOS ... EOS."""
    mark = "\x00HEARD\x00"
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": mark}], tokenize=False)
        before, after = rendered.split(mark)
        head = tokenizer(before, add_special_tokens=False)["input_ids"]
        tail = tokenizer(after, add_special_tokens=False)["input_ids"]
    else:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        head, tail = [start], [tokenizer.eos_token_id]

    def score(texts: list[str], whole: bool = True) -> list[float]:
        """`whole`: the turn ends after the text (its end counts); else the text is a turn's start."""
        return sequence_logprobs(model, head, [tokenizer(" " + t, add_special_tokens=False)["input_ids"]
                                               + (tail if whole else []) for t in texts])

    return score
