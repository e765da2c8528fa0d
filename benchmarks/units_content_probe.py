"""How much of what was said survives the semantic units? Ask Whisper itself.

The units are k-means clusters of Whisper tiny.en's encoder output, so Whisper's own decoder
can read them back: replace the encoder output of the speech frames by (a) the exact-window
features the units are taken from, (b) those features averaged over `pool` frames and
repeated, (c) the unit centroids, repeated — and decode greedily. Whatever (c) loses beside
(b), the units lost; a unit decoder cannot put it back. (a) against the plain encoder
output says what the exact window costs by itself. Beside the greedy WER, the decoder's
teacher-forced cross-entropy of the transcript (nats per token) given each variant's frames
alone is reported: smoother than WER, and the loss `deeptalk-units fit-vq` trains on.

    python benchmarks/units_content_probe.py --codec runs/units/k512-p2.safetensors --n 70 \
        --out benchmarks/results/units_content_probe.json
    python benchmarks/units_content_probe.py --codec runs/units/vq1024-p2.safetensors \
        --vq runs/units/vq1024-p2.vq.pt --n 70 --out benchmarks/results/units_content_probe_vq1024.json

Supervised units (`--vq`: the `deeptalk-units fit-vq` state, post layers included) are read back the
way they were trained: the units through the post layers, Whisper's decoder on those frames
alone (greedy, units_vq.greedy_transcribe), not inside a 30 s window.

Speech: the hearing dev shard's Piper joe utterances (sentences no task holds, never in
the unit codec's fit speech), as cached by deeptalk/hearing.py.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", required=True, help="a units codec file")
    ap.add_argument("--dev-shard", default=None, help="a hearing dev shard's features file (default: the cached one)")
    ap.add_argument("--voice", default="piper:joe")
    ap.add_argument("--n", type=int, default=70)
    ap.add_argument("--vq", default=None, help="a `deeptalk-units fit-vq` state (OUT.vq.pt): read its units back through its post layers")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)

    import whisper
    from whisper.normalizers import EnglishTextNormalizer

    from deeptalk.speech.codec_units import UnitCodec
    from deeptalk.speech.speech_wer import wer_counts, wer_summary
    from deeptalk.speech.units_vq import pool_frames
    from deeptalk.training.units_data import hearing_shard_rows
    from deeptalk_common.paths import cache_dir
    from deeptalk_common.whisper_ckpt import load_whisper

    codec = UnitCodec.load(a.codec)
    vq = None
    if a.vq:
        from whisper.tokenizer import get_tokenizer

        from deeptalk.speech.units_vq import UnitVQ, VQConfig, greedy_transcribe

        st = torch.load(a.vq, weights_only=False)
        vq = UnitVQ(VQConfig(**st["config"]))
        vq.load_state_dict(st["model"])
        vq.eval()
        tok = get_tokenizer(multilingual=False)
    shard = a.dev_shard or sorted(glob.glob(str(cache_dir() / "data" / "hearing-dev-*" / "features-*-exact.pt")),
                                  key=lambda p: -Path(p).stat().st_size)[0]
    rows = [r for r in hearing_shard_rows(Path(shard)) if r["voice"] == a.voice][: a.n]
    model = load_whisper(codec.whisper_name)
    norm = EnglishTextNormalizer()
    opts = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, temperature=0.0)
    variants = ("encoder", "exact_window", "pooled", "units")
    from deeptalk.speech.units_vq import transcript_batch

    if vq is None:
        from whisper.tokenizer import get_tokenizer

        tok = get_tokenizer(multilingual=False)
    counts = {v: [] for v in variants}
    ces = {v: [] for v in variants}
    per = []
    for r in rows:
        audio = torch.from_numpy(np.asarray(r["wav"], np.float32))
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio))
        with torch.no_grad():
            enc = model.encoder(mel[None])                                    # [1, 1500, d]
        exact = r["feats"].float()                                             # [T, d] exact window
        t = min(len(exact), enc.shape[1])
        pooled = pool_frames(exact[:t], codec.pool)
        units = codec.quantize(pooled.numpy())[0]
        feats = {"encoder": enc,
                 "exact_window": torch.cat([exact[None, :t], enc[:, t:]], 1),
                 "pooled": torch.cat([pooled.repeat_interleave(codec.pool, 0)[None, :t], enc[:, t:]], 1),
                 "units": None if vq is not None else   # supervised units live in their own code space
                 torch.cat([codec.centroids[units].repeat_interleave(codec.pool, 0)[None, :t], enc[:, t:]], 1)}
        inp, tgt = transcript_batch([r["text"]], tok)
        alone = {"encoder": enc, "exact_window": exact[None, :t], "pooled": feats["pooled"][:, :t],
                 "units": None if vq is not None else feats["units"][:, :t]}
        with torch.no_grad():
            if vq is not None:
                alone["units"] = vq.from_codes(torch.as_tensor(units)[None])
            for v in variants:
                ces[v].append(float(torch.nn.functional.cross_entropy(model.decoder(inp, alone[v])[0], tgt[0],
                                                                      ignore_index=-100)))
        row = {"text": r["text"]}
        for v in variants:
            if v == "units" and vq is not None:
                with torch.no_grad():
                    hyp = greedy_transcribe(model.decoder, vq.from_codes(torch.as_tensor(units)[None]), tok)
            else:
                hyp = whisper.decode(model, feats[v], opts)[0].text
            counts[v].append(wer_counts(r["text"], hyp, norm))
            row[v] = hyp
        per.append(row)
    summary = {v: wer_summary(np.array([e for e, _ in c]), np.array([w for _, w in c])) for v, c in counts.items()}
    out = {"codec": a.codec, "units": {"k": codec.codebook_size, "pool": codec.pool, "whisper": codec.whisper_name},
           "speech": {"shard": shard, "voice": a.voice, "n": len(rows)},
           "asr": "openai-whisper greedy, the same tiny.en whose encoder the units come from",
           "variants": {"encoder": "Whisper's own encoder output (30 s window)",
                        "exact_window": "speech frames replaced by the exact-window features the units use",
                        "pooled": f"those averaged over {codec.pool} frames, repeated",
                        "units": ("the units through the VQ's post layers (its own decoding)" if vq is not None
                                  else "those replaced by their nearest unit centroid, repeated")},
           "wer": summary, "teacher_forced_ce": {v: round(float(np.mean(c)), 4) for v, c in ces.items()},
           "per_utterance": per}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    for v in variants:
        s = summary[v]
        print(f"{v:14s} corpus WER {s['corpus_wer']:.3f} {[round(x, 3) for x in s['corpus_wer_ci95']]}, "
              f"teacher-forced CE {np.mean(ces[v]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
