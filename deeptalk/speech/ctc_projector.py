"""A projector that hears in the LLM's own words: CTC over the LLM's vocabulary, read back as embeddings.

    Whisper frames (50 Hz) [-> Whisper's last blocks, trained] -> stack `stride` -> MLP + conv -> q [T', H]
        -> logits = scale * q @ E[vocab].T + bias   (E: the LLM's frozen input embeddings)
           blank  = a learned linear readout of q
        -> CTC greedy grouping: runs of one argmax; blank runs dropped
        -> each kept run -> sum_v p(v) E[v]   (probabilities renormalised over the non-blank tokens)

The LLM then reads something close to its own text embeddings, so a frozen LLM answers a
spoken question the way it answers the written one, and the projector learns with a CTC
loss alone: no gradient runs through the LLM, and stage 1 costs minutes, not hours
(LegoSLM, arXiv 2505.11352, does the same with a larger ASR encoder). The number of
positions is the number of tokens heard, not a fixed frame rate.

`vocab` (a persistent buffer) lists the LLM token ids the head can emit: the tokens of the
text it was trained on, so the softmax is not spread over tokens it never saw. The LLM
embedding matrix is not part of this module's state: `tie(embedding_weight)` attaches it
after loading (it is the LLM's, and saving it here would copy 28 M numbers).
"""
from __future__ import annotations

import torch
from torch import nn


class CTCProjector(nn.Module):
    kind = "ctc"

    def __init__(self, in_dim: int, out_dim: int, stride: int, vocab: torch.Tensor, hidden: int | None = None,
                 kernel: int = 5, layers: int = 0, top: nn.Module | None = None):
        super().__init__()
        self.stride = stride
        self.top = top  # Whisper's last blocks, trained here (whisper_top.py); None: the features are final
        hidden = hidden or out_dim
        self.norm = nn.LayerNorm(in_dim * stride)
        self.fc1 = nn.Linear(in_dim * stride, hidden)
        self.conv = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2)
        # optional self-attention over the whole utterance: context a word's tokens need
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(hidden, 8 if hidden % 8 == 0 else 1, 2 * hidden,
                                                               dropout=0.0, batch_first=True, norm_first=True)
                                    for _ in range(layers))
        self.fc2 = nn.Linear(hidden, out_dim)
        self.blank = nn.Linear(out_dim, 1)
        self.register_buffer("vocab", vocab.long().clone())  # LLM ids of the head's classes 1..V (0 = blank)
        self.token_bias = nn.Parameter(torch.zeros(len(vocab)))
        self.log_scale = nn.Parameter(torch.zeros(()))
        self._embed: torch.Tensor | None = None  # [V, H] rows of the LLM's embeddings (not saved)

    def tie(self, embedding_weight: torch.Tensor, tokenizer=None) -> CTCProjector:
        """Attach the LLM's input embedding matrix [vocab_size, H] (frozen). The tokenizer is
        not needed: this head emits token ids."""
        w = embedding_weight.detach()
        if int(self.vocab.max()) >= w.shape[0]:
            raise ValueError(f"CTC vocabulary holds id {int(self.vocab.max())}, the LLM has {w.shape[0]} embeddings")
        self._embed = w[self.vocab.to(w.device)].to(self.fc2.weight.dtype)
        return self

    @property
    def embed(self) -> torch.Tensor:
        if self._embed is None:
            raise RuntimeError("CTCProjector.tie(embedding_weight) must be called before use")
        return self._embed

    def hidden(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, D] Whisper frames (valid up to `lengths`) -> [B, ceil(T/s), H]."""
        b, t, d = feats.shape
        if self.top is not None:
            frames = torch.full((b,), t) if lengths is None else lengths
            feats = self.top(feats, torch.arange(t, device=feats.device).unsqueeze(0) >= frames.to(feats.device).unsqueeze(1))
        pad = (-t) % self.stride
        if pad:
            feats = nn.functional.pad(feats, (0, 0, 0, pad))
        x = self.norm(feats.reshape(b, (t + pad) // self.stride, d * self.stride))
        x = nn.functional.gelu(self.fc1(x))
        n = torch.full((b,), x.shape[1]) if lengths is None else (lengths + self.stride - 1) // self.stride
        padding = (torch.arange(x.shape[1]).unsqueeze(0) >= n.unsqueeze(1)).to(x.device)  # True: not a frame
        x = x.masked_fill(padding.unsqueeze(-1), 0.0)  # the conv sees zeros past the end, batched or alone
        x = x + nn.functional.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        if len(self.layers):
            for layer in self.layers:
                x = layer(x, src_key_padding_mask=padding)
        return self.fc2(x)

    def logits(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T', 1 + V] log-space scores: class 0 is blank, class i is LLM token vocab[i - 1]."""
        q = self.hidden(feats, lengths)
        scaled = q * (self.log_scale.exp() / q.shape[-1] ** 0.5)  # scale the [T, H] side, not the [T, V] one
        return torch.cat([self.blank(q), torch.addmm(self.token_bias, scaled.flatten(0, 1),
                                                     self.embed.T.to(q.dtype)).view(*q.shape[:2], -1)], dim=-1)

    def ctc_loss(self, feats: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
        """Mean CTC loss per target token; `targets` are LLM token ids (each must be in `vocab`)."""
        index = self.class_index()
        return self.class_ctc_loss(feats, lengths, [[index[i] for i in seq] for seq in targets])

    def class_ctc_loss(self, feats: torch.Tensor, lengths: torch.Tensor, classes: list[list[int]]) -> torch.Tensor:
        """Mean CTC loss per target class (1.. = the head's classes, 0 = blank)."""
        logp = self.logits(feats, lengths).float().log_softmax(-1)
        t_len = (lengths + self.stride - 1) // self.stride
        flat = torch.tensor([c for seq in classes for c in seq], dtype=torch.long)
        tgt_len = torch.tensor([len(s) for s in classes], dtype=torch.long)
        loss = nn.functional.ctc_loss(logp.transpose(0, 1), flat, t_len, tgt_len, blank=0, reduction="sum",
                                      zero_infinity=True)
        return loss / tgt_len.sum().clamp(min=1)

    def class_index(self) -> dict[int, int]:
        if getattr(self, "_index", None) is None or len(self._index) != len(self.vocab):
            self._index = {int(v): i + 1 for i, v in enumerate(self.vocab.tolist())}
        return self._index

    def targets(self, row: dict) -> list[int] | None:
        """What ctc_loss learns for a hearing-corpus row: its LLM token ids (None: some token
        is outside the head's vocabulary)."""
        index = self.class_index()
        return row["ids"] if row["ids"] and all(i in index for i in row["ids"]) else None

    def heard_text(self, feats: torch.Tensor, tokenizer) -> str:
        """The greedy transcript of one utterance [1, T, D]."""
        return tokenizer.decode(self.greedy_ids(feats))

    @torch.no_grad()
    def greedy_ids(self, feats: torch.Tensor) -> list[int]:
        """CTC greedy transcript of one utterance [1, T, D] as LLM token ids."""
        return [int(self.vocab[c - 1]) for c, _ in _runs(self.logits(feats)[0].argmax(-1)) if c != 0]

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Soft LLM input embeddings, one [P_i, H] per utterance (P_i = tokens heard, may be 0)."""
        return self.read(feats, lengths)[0]

    def read(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[list[int]]]:
        """(soft embeddings per utterance, the greedy token ids they stand for): one pass."""
        logits = self.logits(feats, lengths)
        t_len = [logits.shape[1]] * logits.shape[0] if lengths is None else \
            ((lengths + self.stride - 1) // self.stride).tolist()
        out, heard = [], []
        for row, n in zip(logits, t_len):
            probs = row[:n].float().softmax(-1)
            tokens = probs[:, 1:] / probs[:, 1:].sum(-1, keepdim=True).clamp(min=1e-9)
            runs = [(c, span) for c, span in _runs(probs.argmax(-1)) if c != 0]
            keep = [tokens[s:e].mean(0) for _, (s, e) in runs]
            out.append(torch.stack(keep) @ self.embed.float() if keep else probs.new_zeros(0, self.embed.shape[1]))
            heard.append([int(self.vocab[c - 1]) for c, _ in runs])
        return [o.to(self.fc2.weight.dtype) for o in out], heard


def _runs(argmax: torch.Tensor) -> list[tuple[int, tuple[int, int]]]:
    """(class, (start, end)) for each run of equal consecutive values."""
    vals = argmax.tolist()
    out, start = [], 0
    for i in range(1, len(vals) + 1):
        if i == len(vals) or vals[i] != vals[start]:
            out.append((vals[start], (start, i)))
            start = i
    return out
