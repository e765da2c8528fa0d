"""Full offline-codec benchmark: `deeptalk-codec eval` on 100 held-out sentences per voice.

    .venv/bin/python benchmarks/codec_eval.py            # writes benchmarks/results/codec_eval.json
    .venv/bin/python benchmarks/codec_eval.py --n 30 --codec path/to/codec.safetensors --out /tmp/x.json
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deeptalk.speech.codec_cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", "benchmarks/results/codec_eval.json"]
    raise SystemExit(main(["eval", "--per-utterance", *args]))
