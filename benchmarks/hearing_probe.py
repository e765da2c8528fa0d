"""Learning curve of the CTC hearing projector: dev WER (greedy CTC, Whisper normaliser) vs training minutes.

    python benchmarks/hearing_probe.py --sentences 8000 --stride 2 --out runs/hearing/s2 [--resume]

Builds (or reuses) the hearing shards (deeptalk/hearing.py), trains a CTCProjector tied to
the base LLM's embeddings, and writes `curve.csv` + `summary.json` under --out. One torch
thread by default, so it runs beside other work.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=8000)
    ap.add_argument("--dev", type=int, default=200)
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--whisper", default="tiny.en", help="the frozen encoder (tiny.en, base: offline)")
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--layers", type=int, default=0, help="self-attention layers in the projector")
    ap.add_argument("--units", choices=("llm", "chars"), default="llm",
                    help="what the CTC head emits: the LLM's tokens (ctc_projector.py) or characters (char_ctc.py)")
    ap.add_argument("--pieces", type=int, default=0, help="--units chars: spell in N BPE pieces learnt on the corpus")
    ap.add_argument("--tune-blocks", type=int, default=0, help="Whisper's last N encoder blocks train with the projector")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--top-lr", type=float, default=None, help="learning rate of the tuned blocks (default --lr)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--max-minutes", type=float, default=60)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--no-spec-augment", action="store_true")
    ap.add_argument("--data-only", action="store_true", help="build the shards and stop")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", type=Path, metavar="STATE", help="start from a saved projector's weights "
                    "(state.pt, projector-*.pt or a stage's speech_encoder.safetensors) with a fresh optimiser and "
                    "schedule, e.g. on more data")
    ap.add_argument("--eval-only", type=Path, metavar="STATE", help="dev WER (overall and per voice) of a saved "
                    "projector (state.pt, projector-*.pt or a stage's speech_encoder.safetensors) into --out/dev_wer.json; no training")
    ap.add_argument("--questions", default=str(ROOT / "benchmarks" / "data" / "general_knowledge_dev.jsonl"),
                    help="a JSONL of questions the curve also transcribes (spoken by Piper joe, as the spoken-QA "
                         "tasks speak them), as questions_wer; '' for none")
    ap.add_argument("--decode", choices=("greedy", "lexicon"), default="greedy",
                    help="--eval-only: read the transcripts greedily or over English words rescored by the base LLM")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    from deeptalk.hearing import (
        HearingData,
        HearingTrain,
        build_hearing_data,
        corpus_vocab,
        question_features,
        train_ctc,
    )
    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig
    from deeptalk_common.base_llm import load_base_llm

    llm, tok = load_base_llm()
    vocab = corpus_vocab(tok)
    enc_cfg = SpeechEncoderConfig(whisper=a.whisper, stride=a.stride, hidden_size=llm.config.hidden_size, projector="ctc",
                                  projector_hidden=a.hidden, projector_layers=a.layers, tune_blocks=a.tune_blocks)
    encoder = SpeechEncoder.from_whisper(enc_cfg, ctc_vocab=vocab)
    t0 = time.monotonic()
    train_files, dev_file = build_hearing_data(HearingData(sentences=a.sentences, dev=a.dev), encoder, tok)
    probes = {"questions": question_features(Path(a.questions), encoder, tok)} if a.questions else {}
    data_s = time.monotonic() - t0
    print(f"data: {len(train_files)} shards in {data_s / 60:.1f} min", flush=True)
    if a.data_only:
        return
    if a.units == "chars":
        from deeptalk.hearing import hearing_pieces
        from deeptalk.speech.char_ctc import CharCTC
        from deeptalk.speech.whisper_top import WhisperTop

        top = WhisperTop(encoder.whisper, encoder.frozen_blocks) if a.tune_blocks else None
        torch.manual_seed(0)
        encoder.projector = CharCTC(encoder.whisper.ln_post.normalized_shape[0], llm.config.hidden_size, a.stride,
                                    a.hidden, layers=a.layers, top=top,
                                    pieces=hearing_pieces(a.pieces) if a.pieces else None)
    if a.eval_only:
        from deeptalk.hearing import ctc_dev_wer

        if a.eval_only.suffix == ".safetensors":  # a stage's speech_encoder.safetensors: the projector's state
            from safetensors.torch import load_file

            state = load_file(a.eval_only)
        else:
            state = torch.load(a.eval_only, weights_only=False)
            state = state.get("projector", state)
        proj = encoder.projector
        proj.load_state_dict(state)
        proj = proj.tie(llm.get_input_embeddings().weight, tok)
        if a.decode == "lexicon":
            from deeptalk.speech.lexicon_decode import LexiconConfig, llm_scorer

            proj.use_lexicon(LexiconConfig(), llm_scorer(llm, tok))
        res = {"decode": a.decode, **ctc_dev_wer(proj, torch.load(dev_file, weights_only=False), tok)}
        for name, f in probes.items():
            res[f"{name}_wer"] = round(ctc_dev_wer(proj, torch.load(f, weights_only=False), tok)["wer"], 4)
        res["state"] = str(a.eval_only)
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "dev_wer.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
        return
    proj = encoder.projector.tie(llm.get_input_embeddings().weight, tok)
    if a.init and not (a.resume and (a.out / "state.pt").is_file()):
        if a.init.suffix == ".safetensors":  # a stage's speech_encoder.safetensors: the projector's state
            from safetensors.torch import load_file

            proj.load_state_dict(load_file(a.init))
        else:
            state = torch.load(a.init, weights_only=False)
            proj.load_state_dict(state.get("projector", state))
        print(f"init: projector weights from {a.init}", flush=True)
    cfg = HearingTrain(stride=a.stride, hidden=a.hidden, lr=a.lr, batch_size=a.batch_size, max_steps=a.max_steps, top_lr=a.top_lr,
                       max_seconds=a.max_minutes * 60, eval_every=a.eval_every, spec_augment=not a.no_spec_augment)
    res = train_ctc(proj, train_files, dev_file, tok, cfg, a.out, resume=a.resume,
                    log=lambda m: print(m, flush=True), probes=probes)
    res.update({"vocab": len(vocab), "params": sum(p.numel() for p in proj.parameters()),
                "threads": a.threads, "data_minutes": round(data_s / 60, 2), "args": {k: str(v) for k, v in vars(a).items()}})
    (a.out / "summary.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
