"""A CTC head over characters (or word pieces): hears letters, hands the LLM the words it spelled.

    Whisper frames (50 Hz) [-> Whisper's last blocks, trained] -> stack `stride` -> MLP + conv
        -> logits over blank + ALPHABET
        -> CTC greedy: runs of one argmax, blanks dropped -> a lower-case transcript
        -> the LLM's tokenizer -> the LLM's own input embeddings for those tokens

Why characters: the LLM-vocabulary head (ctc_projector.py) must learn each of ~34 k tokens'
sound from the few times it is heard, and its readout (tied to embeddings that hold meaning,
not sound) costs most of a training step. Forty classes are each heard thousands of times,
and the readout is free. The LLM then reads exactly the tokens it would read had the words
been typed.
"""
from __future__ import annotations

import re

import torch

from deeptalk.speech.ctc_projector import CTCProjector, _runs

ALPHABET = " abcdefghijklmnopqrstuvwxyz'0123456789"


def spell(text: str) -> list[int] | None:
    """Class ids (1..len(ALPHABET)) of a transcript, lower-cased, other characters dropped,
    spaces collapsed; None when nothing is left."""
    return [ALPHABET.index(c) + 1 for c in spelled(text)] or None


def train_pieces(texts, size: int) -> str:
    """A BPE of `size` pieces over spelled text (tokenizers' trainer; every character of
    ALPHABET is a piece, so any transcript can be written), as its JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=size, initial_alphabet=list(ALPHABET.strip()) + ["\u2581"],
                                  show_progress=False, special_tokens=[])
    bpe.train_from_iterator((spelled(t) for t in texts), trainer)
    return bpe.to_str()


def spelled(text: str) -> str:
    """A text as the head writes it: lower case, letters, digits and apostrophes, single spaces."""
    t = re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " "))
    return re.sub(r" +", " ", t).strip()


class CharCTC(CTCProjector):
    """CTC over characters, or over word pieces learnt on the hearing corpus (`pieces`: a
    tokenizers BPE as JSON; it travels in the state as bytes). Pieces write common words whole,
    so the head spells less and each class is still heard thousands of times."""

    kind = "ctc_chars"

    def __init__(self, in_dim: int, out_dim: int, stride: int, hidden: int | None = None, kernel: int = 5,
                 layers: int = 0, top=None, pieces: str | None = None):
        super().__init__(in_dim, out_dim, stride, torch.zeros(0, dtype=torch.long), hidden, kernel, layers, top)
        self.bpe = None
        if pieces is not None:
            from tokenizers import Tokenizer

            self.bpe = Tokenizer.from_str(pieces)
            self.register_buffer("pieces", torch.tensor(list(pieces.encode()), dtype=torch.uint8))
        units = self.bpe.get_vocab_size() if self.bpe is not None else len(ALPHABET)
        self.chars = torch.nn.Linear(out_dim, 1 + units)
        del self.blank, self.token_bias, self.log_scale
        self.lexicon = None  # transcribe() greedily unless use_lexicon() was called
        self.score_text = self.turn_score = None

    def use_lexicon(self, config=None, score=None, turn_score=None) -> CharCTC:
        """Transcribe by beam search over English words (deeptalk/speech/lexicon_decode.py),
        the n best rescored by `score` (texts -> log-probabilities, e.g. the LLM's) when given;
        with `turn_score` (texts -> log-probabilities as a whole user turn) the words are then
        written with the capitals and end mark it prefers (deeptalk/speech/written_form.py)."""
        from deeptalk.speech.lexicon_decode import LexiconDecoder
        from deeptalk.speech.written_form import WrittenForm

        if self.bpe is None:
            raise ValueError("lexicon decoding needs a piece head (pieces: N); this head spells characters")
        self.lexicon = LexiconDecoder(self.spell_word, 1 + self.bpe.get_vocab_size(), ALPHABET.strip(), config)
        self.written_form = WrittenForm(self.lexicon.config.written)
        self.score_text, self.turn_score = score, turn_score
        return self

    def spell_word(self, word: str) -> list[int] | None:
        """A word's class ids in the head's pieces (None when it cannot be written)."""
        if spelled(word) != word:  # upper case, punctuation: not how the head writes
            return None
        return [i + 1 for i in self.bpe.encode(word).ids] or None

    def tie(self, embedding_weight: torch.Tensor, tokenizer=None) -> CharCTC:
        """The LLM's input embeddings and the tokenizer that turns the spelled words into its tokens."""
        if tokenizer is None:
            raise ValueError("a ctc_chars projector needs the LLM's tokenizer (tie(embedding_weight, tokenizer))")
        self._embed, self.tokenizer = embedding_weight.detach(), tokenizer
        return self

    def logits(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.chars(self.hidden(feats, lengths))

    def targets(self, row: dict) -> list[int] | None:
        if self.bpe is None:
            return spell(row["text"])
        return [i + 1 for i in self.bpe.encode(spelled(row["text"])).ids] or None

    def ctc_loss(self, feats: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
        """Mean CTC loss per character (or piece); `targets` are class ids, as `targets()` gives."""
        return self.class_ctc_loss(feats, lengths, targets)

    def heard_text(self, feats: torch.Tensor, tokenizer=None) -> str:
        return self.transcribe(feats)[0]

    @torch.no_grad()
    def transcribe(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> list[str]:
        """CTC transcripts, one per utterance of the batch: greedy, or over words (use_lexicon)."""
        logits = self.logits(feats, lengths)
        t_len = [logits.shape[1]] * logits.shape[0] if lengths is None else \
            ((lengths + self.stride - 1) // self.stride).tolist()
        if self.lexicon is not None:
            lp = logits.float().log_softmax(-1)
            words = [self.lexicon.decode(row[:n], self.score_text) for row, n in zip(lp, t_len)]
            if self.turn_score is None:
                return words
            from deeptalk.speech.written_form import written

            return [written(w, self.turn_score, self.written_form) for w in words]
        runs = [[c for c, _ in _runs(row[:n].argmax(-1)) if c != 0] for row, n in zip(logits, t_len)]
        if self.bpe is not None:
            return [" ".join(self.bpe.decode([c - 1 for c in r]).split()) for r in runs]
        return [" ".join("".join(ALPHABET[c - 1] for c in r).split()) for r in runs]

    def read(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[list[int]]]:
        """(the LLM's embeddings of the tokens of each transcript, those token ids): what the LLM
        would read had the transcript been typed (a leading space, as after the user's turn starts)."""
        if getattr(self, "tokenizer", None) is None:
            raise RuntimeError("CharCTC.tie(embedding_weight, tokenizer) must be called before reading")
        heard = [self.tokenizer(" " + t, add_special_tokens=False)["input_ids"] if t else []
                 for t in self.transcribe(feats, lengths)]
        dtype = self.fc2.weight.dtype
        return [self.embed[torch.tensor(ids, dtype=torch.long)].to(dtype) for ids in heard], heard

    @torch.no_grad()
    def greedy_ids(self, feats: torch.Tensor) -> list[int]:
        return self.read(feats)[1][0]


def pieces_from_state(state: dict) -> str | None:
    """The BPE JSON a saved CharCTC state carries (None: characters, or another projector)."""
    return bytes(state["pieces"].tolist()).decode() if "pieces" in state else None
