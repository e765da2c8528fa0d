"""The lexicon decoder's weights for a piece head, chosen on the hearing corpus's dev utterances.

    python benchmarks/lexicon_sweep.py --stage runs/reference-ctc-base/stage-1 \
        --out benchmarks/results/hearing/lexicon_sweep_base.json

The head hears each of the 300 dev utterances (glosses and quotations in 8 voices; no question
set holds them) once; every (lm_weight, word_score) of the grid decodes the same log-probabilities
to its n best word sequences, and every alpha rescores them with the base LLM (each distinct
sentence scored once). Corpus WER under Whisper's English normaliser, as the training curve
measures; the best cell's 95 % CI by bootstrap over utterances. The questions (gk_dev, Piper joe)
are decoded with the best weights and the default ones for a check, never to choose.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",")]


def corpus_wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    return jiwer.process_words(refs, hyps).wer


def bootstrap_ci(refs: list[str], hyps: list[str], n: int = 1000, seed: int = 0) -> list[float]:
    import jiwer
    import numpy as np

    errs = [jiwer.process_words(r, h) for r, h in zip(refs, hyps)]
    e = np.array([m.substitutions + m.deletions + m.insertions for m in errs], dtype=float)
    w = np.array([len(r.split()) for r in refs], dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(e), size=(n, len(e)))
    s = e[idx].sum(1) / w[idx].sum(1)
    return [round(float(np.percentile(s, 2.5)), 4), round(float(np.percentile(s, 97.5)), 4)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", type=Path, required=True, help="a stage folder whose speech encoder is a piece head")
    ap.add_argument("--sentences", type=int, default=16000, help="the hearing corpus the head trained on (its dev split)")
    ap.add_argument("--dev", type=int, default=300)
    ap.add_argument("--lm-weights", type=_floats, default=[0.1, 0.3, 0.6, 1.0])
    ap.add_argument("--word-scores", type=_floats, default=[-6.0, -4.0, -2.0, 0.0])
    ap.add_argument("--alphas", type=_floats, default=[0.0, 1.0, 2.0, 3.0, 4.0])
    ap.add_argument("--bonuses", type=_floats, default=[0.0], help="the LLM's per-word bonus in the rescoring")
    ap.add_argument("--nbest", type=int, default=8)
    ap.add_argument("--any-case", action="store_true", help="the LLM scores each word as itself or its capital")
    ap.add_argument("--questions", default=str(ROOT / "benchmarks" / "data" / "general_knowledge_dev.jsonl"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from safetensors.torch import load_file
    from tqdm import tqdm
    from whisper.normalizers import EnglishTextNormalizer

    from deeptalk.hearing import HearingData, build_hearing_data, question_features
    from deeptalk.speech.char_ctc import ALPHABET, pieces_from_state
    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig
    from deeptalk.speech.lexicon_decode import LexiconConfig, LexiconDecoder, llm_scorer, rescored
    from deeptalk_common.base_llm import load_base_llm

    llm, tok = load_base_llm()
    llm.eval()
    state = load_file(str(a.stage / "speech_encoder.safetensors"))
    cfg = SpeechEncoderConfig(**json.loads((a.stage / "speech_encoder.json").read_text()))
    encoder = SpeechEncoder.from_whisper(cfg, pieces=pieces_from_state(state))
    head = encoder.projector
    head.load_state_dict(state)
    head = head.tie(llm.get_input_embeddings().weight, tok).eval()
    _, dev_file = build_hearing_data(HearingData(sentences=a.sentences, dev=a.dev), encoder, tok)
    norm = EnglishTextNormalizer()

    def log_probs(rows) -> list[torch.Tensor]:
        with torch.no_grad():
            return [head.logits(r["feats"].float().unsqueeze(0))[0].float().log_softmax(-1) for r in rows]

    dev_rows = torch.load(dev_file, weights_only=False)
    refs = [norm(r["text"]) or "-" for r in dev_rows]
    t0 = time.monotonic()
    lps = log_probs(dev_rows)
    score = llm_scorer(llm, tok, any_case=a.any_case)
    lm_cache: dict[str, float] = {}

    def lm(texts: list[str]) -> list[float]:
        new = [t for t in dict.fromkeys(texts) if t not in lm_cache]
        if new:
            lm_cache.update(zip(new, score(new)))
        return [lm_cache[t] for t in texts]

    nbest_cache: dict[tuple[int, int], list] = {}

    def nbest(decoder, lp) -> list[tuple[str, float]]:
        """The decoder's n best for one utterance, searched once (the decoders and log-probs live
        to the end, so their ids are keys)."""
        key = (id(decoder), id(lp))
        if key not in nbest_cache:
            nbest_cache[key] = decoder.nbest(lp) or [("", 0.0)]
        return nbest_cache[key]

    def decode_all(decoder, lp_list, cells) -> dict[tuple[float, float], list[str]]:
        """(alpha, bonus) -> each utterance's best sequence, rescored as LexiconDecoder.decode does."""
        out: dict[tuple[float, float], list[str]] = {c: [] for c in cells}
        for lp in lp_list:
            hyps = nbest(decoder, lp)
            s = lm([t for t, _ in hyps]) if len(hyps) > 1 else [0.0]
            for al, bo in cells:
                best = max(zip(hyps, s), key=lambda h: rescored(*h, al, bo))[0][0] if al else hyps[0][0]
                out[(al, bo)].append(best)
        return out

    def oracle_wer(decoder, lp_list) -> float:
        """Corpus WER if each utterance took the best of its n best: what rescoring could reach."""
        import jiwer

        def errors(ref: str, hyp: str) -> int:
            m = jiwer.process_words(ref, hyp)
            return m.substitutions + m.deletions + m.insertions

        errs = words = 0
        for ref, lp in zip(refs, lp_list):
            errs += min(errors(ref, norm(t) or "-") for t, _ in nbest(decoder, lp))
            words += len(ref.split())
        return errs / words

    rows = []
    grid = list(itertools.product(a.lm_weights, a.word_scores))
    decoders = {}
    for lw, ws in tqdm(grid, desc="lexicon grid"):
        dec = LexiconDecoder(head.spell_word, 1 + head.bpe.get_vocab_size(), ALPHABET.strip(),
                             LexiconConfig(lm_weight=lw, word_score=ws, nbest=a.nbest))
        decoders[(lw, ws)] = dec
        for (al, bo), hyps in decode_all(dec, lps, list(itertools.product(a.alphas, a.bonuses))).items():
            rows.append({"lm_weight": lw, "word_score": ws, "alpha": al, "lm_word_bonus": bo,
                         "dev_wer": round(corpus_wer(refs, [norm(h) for h in hyps]), 4)})
    sweep_s = time.monotonic() - t0
    best = min(rows, key=lambda r: r["dev_wer"])
    default = LexiconConfig()  # the weights in force when the sweep ran
    current = next((r for r in rows if (r["lm_weight"], r["word_score"], r["alpha"], r["lm_word_bonus"]) ==
                    (default.lm_weight, default.word_score, default.alpha, default.lm_word_bonus)), best)

    def cell_hyps(r, lp_list):
        cell = (r["alpha"], r["lm_word_bonus"])
        return [norm(h) for h in decode_all(decoders[(r["lm_weight"], r["word_score"])], lp_list, [cell])[cell]]

    res = {"stage": str(a.stage), "whisper": cfg.whisper, "dev_utterances": len(refs), "nbest": a.nbest,
           "any_case": a.any_case,
           "best": {**best, "ci95": bootstrap_ci(refs, cell_hyps(best, lps))},
           "default": {**current, "ci95": bootstrap_ci(refs, cell_hyps(current, lps))},
           "oracle_dev_wer": {f"{lw},{ws}": round(oracle_wer(d, lps), 4) for (lw, ws), d in decoders.items()},
           "sweep_seconds": round(sweep_s, 1), "threads": a.threads, "load_average": os.getloadavg(), "grid": rows}
    if a.questions:  # a check on the questions with the best and the default weights, not a choice
        q_rows = torch.load(question_features(Path(a.questions), encoder, tok), weights_only=False)
        q_refs = [norm(r["text"]) or "-" for r in q_rows]
        q_lps = log_probs(q_rows)
        res["questions"] = {name: {"wer": round(corpus_wer(q_refs, h := cell_hyps(r, q_lps)), 4),
                                   "ci95": bootstrap_ci(q_refs, h)}
                            for name, r in (("best", best), ("default", current))}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "grid"}, indent=1))


if __name__ == "__main__":
    main()
