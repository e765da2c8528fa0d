"""Beam search for a CTC piece head over English words; the LLM then picks among the best.

    log-probs [T, 1 + pieces] (blank = 0)
        -> flashlight-text's LexiconDecoder: only words of the lexicon (wordfreq's N most
           frequent English words, each spelled in the head's pieces), a unigram prior from
           their frequencies (KenLM over a unigram ARPA written once to the cache)
        -> the n best distinct word sequences
        -> + alpha * the LLM's log-probability of each (the model's own text path) -> the best

Why: greedy CTC writes what it hears letter by letter ("the largest planit", "a cocktal
oour"); the lexicon keeps only words, and the LLM knows which near-homophone makes a
sentence. Measured in docs/training.md "Hearing in words".
"""
from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from deeptalk_common.paths import cache_dir

Scorer = Callable[[list[str]], list[float]]


@dataclass
class LexiconConfig:
    words: int = 100_000  # wordfreq's most frequent English words that the head's pieces can spell
    beam: int = 32
    # the weights: the best of a grid on the hearing corpus's dev utterances for the Whisper-base
    # piece head (benchmarks/lexicon_sweep.py; never chosen on a question set)
    lm_weight: float = 0.3  # the unigram prior's weight in the beam
    word_score: float = -2.0  # added per word: against inserting short frequent words
    nbest: int = 8  # distinct word sequences the LLM rescores
    alpha: float = 1.0  # the LLM's log-probability weight in the rescoring; 0 = the beam's best
    lm_word_bonus: float = 3.0  # added to the LLM's log-probability per word: each word costs it
    # nats, so without a bonus the rescoring prefers sequences that drop words ("who wrote christmas")
    written: str = "true_case"  # capitals and end mark chosen by the LLM (deeptalk/speech/written_form.py)
    any_case: bool = False  # the LLM scores each heard word as itself or its capital, whichever (llm_scorer)

    def to_dict(self) -> dict:
        return asdict(self)


def english_words(n: int, alphabet: str) -> tuple[list[str], list[float]]:
    """wordfreq's `n` most frequent English words written only in `alphabet`, with their
    natural-log frequencies normalised over the kept words."""
    import wordfreq

    letters = set(alphabet)
    words = [w for w in wordfreq.top_n_list("en", n) if w and set(w) <= letters]
    freq = [wordfreq.word_frequency(w, "en") for w in words]
    total = sum(freq)
    return words, [math.log(f / total) for f in freq]


def unigram_arpa(words: list[str], logp: list[float], path: Path) -> Path:
    """A unigram LM as an ARPA file (KenLM reads only bigram models or larger, so one bigram,
    `<s> </s>`, the empty sentence, makes it one)."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(f"\\data\\\nngram 1={len(words) + 3}\nngram 2=1\n\n\\1-grams:\n")
        f.write("-99\t<s>\t0\n0\t</s>\n-99\t<unk>\n")
        for w, p in zip(words, logp):
            f.write(f"{p / math.log(10):.5f}\t{w}\t0\n")
        f.write("\n\\2-grams:\n-99\t<s> </s>\n\n\\end\\\n")
    tmp.rename(path)
    return path


class LexiconDecoder:
    """CTC beam search over a word lexicon for a head whose class k + 1 is piece k of `spell`'s
    pieces; `spell(word)` gives a word's class ids, or None when it cannot be written."""

    def __init__(self, spell: Callable[[str], list[int] | None], n_classes: int, alphabet: str,
                 config: LexiconConfig | None = None):
        from flashlight.lib.text.decoder import (
            CriterionType,
            LexiconDecoderOptions,
            SmearingMode,
            Trie,
        )
        from flashlight.lib.text.decoder import LexiconDecoder as FlashlightDecoder
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary

        self.config = cfg = config or LexiconConfig()
        words, logp = english_words(cfg.words, alphabet)
        spelled = [(w, p, spell(w)) for w, p in zip(words, logp)]
        spelled = [(w, p, s) for w, p, s in spelled if s]
        self.words = [w for w, _, _ in spelled]
        key = hashlib.sha256("\n".join(self.words).encode()).hexdigest()[:16]  # the list fixes the ARPA
        arpa = unigram_arpa(self.words, [p for _, p, _ in spelled], cache_dir() / "lexicon" / f"unigram-{key}.arpa")
        vocab = Dictionary()
        for w in self.words:
            vocab.add_entry(w)
        vocab.add_entry("<unk>")
        self._lm = KenLM(str(arpa), vocab)
        # A word ends on a silence class: flashlight emits a word on the class that completes its
        # spelling, and a word that ended on its last piece cannot take that piece's repeated
        # frames (CTC spikes last several). The head has no such class, but a blank frame
        # after a word is its end: silence is one more class, with the blank's log-probs.
        self._sil = n_classes
        self._trie = Trie(n_classes + 1, self._sil)
        for i, (_, p, s) in enumerate(spelled):
            self._trie.insert(s + [self._sil], i, p)
        self._trie.smear(SmearingMode.MAX)
        opts = LexiconDecoderOptions(beam_size=cfg.beam, beam_size_token=min(cfg.beam, n_classes),
                                     beam_threshold=25.0, lm_weight=cfg.lm_weight, word_score=cfg.word_score,
                                     unk_score=float("-inf"), sil_score=0.0, log_add=False,
                                     criterion_type=CriterionType.CTC)
        self._decoder = FlashlightDecoder(opts, self._trie, self._lm, self._sil, 0, len(self.words), [], False)

    def nbest(self, log_probs: torch.Tensor) -> list[tuple[str, float]]:
        """Distinct word sequences of the final beam, best first, with the beam's score."""
        lp = log_probs.detach().float().cpu()
        lp = torch.cat([lp, lp[:, :1]], 1).contiguous()  # the silence class
        results = self._decoder.decode(lp.data_ptr(), lp.shape[0], lp.shape[1])
        out: list[tuple[str, float]] = []
        seen: set[str] = set()
        for r in results:
            text = " ".join(self.words[i] for i in r.words if 0 <= i < len(self.words))
            if text not in seen:
                seen.add(text)
                out.append((text, r.score))
            if len(out) >= self.config.nbest:
                break
        return out

    def decode(self, log_probs: torch.Tensor, score: Scorer | None = None) -> str:
        """The best word sequence; with `score` (texts -> log-probabilities) the n best are
        rescored by it."""
        hyps = self.nbest(log_probs)
        if not hyps:
            return ""
        if score is None or self.config.alpha == 0 or len(hyps) == 1:
            return hyps[0][0]
        lm = score([t for t, _ in hyps])
        return max(zip(hyps, lm), key=lambda h: self.rescored(h[0], h[1]))[0][0]

    def rescored(self, hyp: tuple[str, float], lm_logprob: float) -> float:
        """A hypothesis's (text, beam score) final score under this decoder's weights."""
        return rescored(hyp, lm_logprob, self.config.alpha, self.config.lm_word_bonus)


def rescored(hyp: tuple[str, float], lm_logprob: float, alpha: float, lm_word_bonus: float) -> float:
    """A hypothesis's (text, beam score) final score, given the LLM's log-probability of its text
    (the weights as arguments: a sweep scores every cell without touching a decoder's config)."""
    text, beam = hyp
    return beam + alpha * (lm_logprob + lm_word_bonus * len(text.split()))


def read_head(model, head: list[int]):
    """The keys and values of a context's tokens but its last (None for a one-token context):
    read once, shared by every row that starts with the context."""
    if len(head) < 2:
        return None
    device = model.get_input_embeddings().weight.device
    with torch.no_grad():
        return model(input_ids=torch.tensor([head[:-1]], device=device), use_cache=True).past_key_values


def _prefix_tree(root: int, bodies: list[list[int]]) -> tuple[list[int], list[int], list[list[int]]]:
    """The bodies as one token tree under `root` (node 0): each distinct prefix is one node.
    Returns (each node's token, its parent (-1 for the root), each body's node per prefix length
    0 .. len - 1, the root standing for the empty prefix)."""
    tokens, parents, index = [root], [-1], {}
    at: list[list[int]] = []
    for body in bodies:
        node, path = 0, [0]
        for t in body:
            node = index.setdefault((node, t), len(tokens))
            if node == len(tokens):
                tokens.append(t)
                parents.append(path[-1])
            path.append(node)
        at.append(path[:-1])
    return tokens, parents, at


def next_token_logprobs(model, head: list[int], bodies: list[list[int]], head_past=None) -> torch.Tensor:
    """[bodies, longest body, vocab]: the causal LM's log-probabilities of the token at each body
    position, after `head` (the same context for every body: a chat template's start) and the
    body's tokens before it. The head is read once (or given: `head_past`, from `read_head`).
    The bodies are read as one prefix tree (tree attention: each node sees the head and its own
    ancestors, at its depth's position), so a prefix they share is computed once: an n-best
    list that differs in a word or two, or a sentence under three end marks, costs little more
    than one of them. Padded positions mean nothing."""
    width = max(len(b) for b in bodies)
    device = model.get_input_embeddings().weight.device
    # the head's last token is the tree's root: its logits predict each body's first token
    tokens, parents, at = _prefix_tree(head[-1], bodies)
    n, past_len = len(tokens), len(head) - 1
    sees = torch.eye(n, dtype=torch.bool)  # each node sees itself and its ancestors
    depth = [0] * n
    for i in range(1, n):   # a parent is always numbered before its children
        sees[i] |= sees[parents[i]]
        depth[i] = depth[parents[i]] + 1
    dtype = model.get_input_embeddings().weight.dtype
    mask = torch.zeros(1, 1, n, past_len + n, dtype=dtype, device=device)
    mask[0, 0, :, past_len:].masked_fill_(~sees.to(device), torch.finfo(dtype).min)
    past = read_head(model, head) if head_past is None else copy.deepcopy(head_past)  # the forward extends it
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens], device=device), attention_mask=mask,
                       position_ids=torch.tensor([[past_len + d for d in depth]], device=device),
                       past_key_values=past, use_cache=past is not None).logits[0]
    logp = logits.float().log_softmax(-1).cpu()
    rows = torch.tensor([path + [0] * (width - len(path)) for path in at], dtype=torch.long)
    return logp[rows]


def sequence_logprobs(model, head: list[int], bodies: list[list[int]], head_past=None) -> list[float]:
    """The causal LM's log-probability of each body's tokens after `head` (the same context for
    every body; its own tokens are not counted), as one batch."""
    logp = next_token_logprobs(model, head, bodies, head_past)
    return [float(logp[k, torch.arange(len(b)), torch.tensor(b, dtype=torch.long)].sum()) for k, b in enumerate(bodies)]


def llm_scorer(model, tokenizer, any_case: bool = False) -> Scorer:
    """Texts -> the causal LM's log-probability of each (after its BOS, or EOS as a start).

    `any_case`: each word counts as itself or its capital form, whichever way it is written
    (log(p(word) + p(Word)) given the words before as heard): a piece head cannot hear case,
    and in lower case a name is a rare word ("what is the capital of chill" scores above
    "... of chile" for SmolLM2-135M, not above "... of Chile"). Every word's capital shares the
    row of the sentence up to it (one prefix tree), so it costs a few tokens a word."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    def ids(text: str) -> list[int]:  # no words, no tokens (not the token of a lone space)
        return tokenizer(" " + text, add_special_tokens=False)["input_ids"] if text.strip() else []

    def score(texts: list[str]) -> list[float]:
        if not any_case:
            return sequence_logprobs(model, [start], [ids(t) for t in texts])
        bodies: list[list[int]] = []
        plans = []   # per text: its row, then per word (start, lower ids, capital's row or None, capital ids)
        for t in texts:
            words = t.split()
            lower = [ids(w) for w in words]
            row, flat = len(bodies), [x for w in lower for x in w]
            bodies.append(flat)
            plan, at = [], 0
            for w, low in zip(words, lower):
                cap = ids(w[:1].upper() + w[1:])
                cap_row = None if cap == low else row if len(cap) == 1 else len(bodies)
                if cap_row is not None and cap_row != row:
                    bodies.append(flat[:at] + cap)
                plan.append((at, low, cap_row, cap))
                at += len(low)
            plans.append((row, plan))
        logp = next_token_logprobs(model, [start], bodies)

        def span(r: int, at: int, toks: list[int]) -> torch.Tensor:
            return logp[r, torch.arange(at, at + len(toks)), torch.tensor(toks)].sum()

        out = []
        for row, plan in plans:
            total = torch.zeros(())
            for at, low, cap_row, cap in plan:
                own = span(row, at, low)
                total = total + (own if cap_row is None else torch.logaddexp(own, span(cap_row, at, cap)))
            out.append(float(total))
        return out

    return score
