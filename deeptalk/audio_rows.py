"""Audio embedding and output rows that start from what each code stands for.

A codec whose codes are written symbols (the phone codec: espeak-ng phonemes, `codec.symbols`)
lets each code's input embedding and its row of the audio head start as the LLM's own text
embedding of that symbol (the mean over the symbol's tokens) instead of noise. The LLM has
read letters and IPA: "p" starts near "b", the vowels near each other, and the head's first
guess over the codes is the text head's guess over those symbols. The audio specials (pad,
bos, eos) keep their random rows: no symbol stands for them.
"""
from __future__ import annotations

import torch


class AudioRowsError(ValueError):
    """The codec's codes are not symbols, or the model has no audio rows to set."""


def symbol_vectors(embed: torch.Tensor, tokenizer, symbols: dict[int, str]) -> dict[int, torch.Tensor]:
    """code -> mean of the text embeddings of the symbol's tokens (no special tokens)."""
    out = {}
    for code, symbol in symbols.items():
        ids = tokenizer(symbol, add_special_tokens=False)["input_ids"]
        if ids:
            out[code] = embed[ids].float().mean(0)
    return out


@torch.no_grad()
def init_audio_rows_from_symbols(model, tokenizer, symbols: dict[int, str]) -> int:
    """Set every codebook's embedding and head row of each symbol's code; returns the codes set."""
    cfg = model.config
    if not symbols:
        raise AudioRowsError("audio rows from symbols: the codec's codes are not symbols (it has no `symbols`)")
    if model.model.audio_embed is None or model.audio_head is None:
        raise AudioRowsError("audio rows from symbols: the model has no audio embeddings or head (num_codebooks 0)")
    if max(symbols) >= cfg.codebook_size:
        raise AudioRowsError(f"audio rows from symbols: code {max(symbols)} is outside the model's codebook "
                             f"of {cfg.codebook_size}")
    vectors = symbol_vectors(model.model.embed_tokens.weight, tokenizer, symbols)
    embed, head = model.model.audio_embed.weight, model.audio_head.weight
    for q in range(cfg.num_codebooks):
        for code, vec in vectors.items():
            row = q * cfg.audio_vocab_size + code
            embed[row] = vec.to(embed.dtype)
            head[row] = vec.to(head.dtype)
    return len(vectors)
