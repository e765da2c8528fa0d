"""Which words a spoken answer gets right, by how common they are.

    python benchmarks/tts_word_frequency.py runs/ship-full/deeptalk/<run>/samples_tts_repeat_sentence.jsonl \
        --out benchmarks/results/speaking/tts_word_frequency.json

Each reference word of `tts_repeat_sentence` (Whisper's English normaliser, as the task scores)
counts as said when the alignment of Whisper's transcript of the speech to the sentence keeps
it; words are binned by wordfreq's Zipf frequency (6: once per million words ... 3: once per
billion). A speech channel that has learnt the spelling-to-sound map says rare words as well
as common ones; one that has memorised frequent words does not.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

BINS = ((6.0, ">=6"), (5.0, "5-6"), (4.0, "4-5"), (3.0, "3-4"), (float("-inf"), "<3"))


def said_by_frequency(rows: list[dict]) -> dict[str, dict]:
    import jiwer
    import wordfreq
    from whisper.normalizers import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    counts = {name: [0, 0] for _, name in BINS}
    for row in rows:
        ref = norm(row["doc"]["text"])
        if not ref:
            continue
        hyp = norm((row.get("transcripts") or {}).get("speech") or "")
        words = ref.split()
        said = [False] * len(words)
        if hyp:
            for chunk in jiwer.process_words(ref, hyp).alignments[0]:
                if chunk.type == "equal":
                    said[chunk.ref_start_idx:chunk.ref_end_idx] = [True] * (chunk.ref_end_idx - chunk.ref_start_idx)
        for w, ok in zip(words, said):
            z = wordfreq.zipf_frequency(w, "en")
            name = next(n for lo, n in BINS if z >= lo)
            counts[name][0] += ok
            counts[name][1] += 1
    return {name: {"words": t, "said": round(c / t, 3) if t else None} for name, (c, t) in counts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples", type=Path, help="a samples_tts_repeat_sentence.jsonl of a run with --log-samples")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    rows = [json.loads(line) for line in a.samples.read_text(encoding="utf-8").splitlines() if line.strip()]
    res = {"samples": str(a.samples), "sentences": len(rows), "by_zipf_frequency": said_by_frequency(rows)}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
