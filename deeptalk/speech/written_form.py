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

import torch

from deeptalk.speech.lexicon_decode import next_token_logprobs, read_head, sequence_logprobs

TurnScorer = Callable[..., list[float]]  # (texts, whole=True) -> log-probabilities
CapitalGains = Callable[[list[str], list[int]], list[float]]  # (words, which) -> log p(capital) - log p(as is)
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
    # look unlikely, "between europe and africa"); a second pass reads the decided words
    gains = getattr(score, "capital_gains", None) or gains_by_rows(score)
    out = list(first)
    for _ in range(cfg.passes):
        todo = [i for i in range(1, len(out)) if out[i] != _capital(out[i])]
        if not todo:
            break
        changed = [i for i, g in zip(todo, gains(out, todo)) if g > 0]
        if not changed:
            break
        for i in changed:
            out[i] = _capital(out[i])
    return " ".join(out) + best_end


def gains_by_rows(score: TurnScorer) -> CapitalGains:
    """Capital gains from any turn scorer: two turn starts a word, ending on either form."""
    def gains(words: list[str], todo: list[int]) -> list[float]:
        s = score([" ".join(words[:i] + [w]) for i in todo for w in (words[i], _capital(words[i]))], whole=False)
        return [s[2 * k + 1] - s[2 * k] for k in range(len(todo))]

    return gains


class LLMTurnScorer:
    """A causal LM's log-probability of texts as a user turn: after its chat template's start
    ("<|im_start|>user\\n"), up to and including the turn's end; each word read with a leading
    space, as a CTC head hands the words over. Without a chat template: BOS ... EOS."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        mark = "\x00HEARD\x00"
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": mark}], tokenize=False)
            before, after = rendered.split(mark)
            self.head = tokenizer(before, add_special_tokens=False)["input_ids"]
            self.tail = tokenizer(after, add_special_tokens=False)["input_ids"]
        else:
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            self.head, self.tail = [start], [tokenizer.eos_token_id]
        self._head_past = None

    @property
    def head_past(self):
        """The chat template's start, read once (24 of a heard question's ~34 tokens): the
        scorer serves a model that no longer trains."""
        if self._head_past is None:
            self._head_past = read_head(self.model, self.head)
        return self._head_past

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(" " + text, add_special_tokens=False)["input_ids"]

    def __call__(self, texts: list[str], whole: bool = True) -> list[float]:
        """`whole`: the turn ends after the text (its end counts); else the text is a turn's start."""
        return sequence_logprobs(self.model, self.head, [self._ids(t) + (self.tail if whole else []) for t in texts],
                                 self.head_past)

    def capital_gains(self, words: list[str], todo: list[int]) -> list[float]:
        """For each word i of `todo`: log p(its capital form | the words before) - log p(the word
        as it stands | the words before). The same numbers as `gains_by_rows`, far cheaper: one
        row, the sentence as it stands, gives every word's own log-probability and the first
        token of every capital form; only capitals of several tokens need a row of their own."""
        ids = [self._ids(w) for w in words]
        caps = {i: self._ids(_capital(words[i])) for i in todo}
        starts = [sum(len(t) for t in ids[:i]) for i in range(len(ids))]  # each word's first token
        longer = [i for i in todo if len(caps[i]) > 1]
        bodies = [[t for w in ids for t in w]] + [[t for w in ids[:i] for t in w] + caps[i] for i in longer]
        logp = next_token_logprobs(self.model, self.head, bodies, self.head_past)  # [body, position, vocab]
        out = []
        for i in todo:
            s = starts[i]
            own = float(logp[0, torch.arange(s, s + len(ids[i])), torch.tensor(ids[i])].sum())
            r = 1 + longer.index(i) if i in longer else 0
            cap = float(logp[r, torch.arange(s, s + len(caps[i])), torch.tensor(caps[i])].sum())
            out.append(cap - own)
        return out


def turn_scorer(model, tokenizer) -> LLMTurnScorer:
    """The causal LM as a turn scorer, with its cheap capital gains."""
    return LLMTurnScorer(model, tokenizer)
