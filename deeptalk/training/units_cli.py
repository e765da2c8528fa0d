"""`deeptalk-units`: the semantic units a DeepTalk model speaks, and their decoder, from the hearing corpus.

    deeptalk-units fit-vq --k 1024 --pool 2 --shards 16 --steps 1500 --out runs/units/vq1024-p2.safetensors
    deeptalk-units pairs --units-from runs/units/vq1024-p2.safetensors --out runs/unit-pairs/vq1024
    deeptalk-units train-decoder --units-from runs/units/vq1024-p2.safetensors --pairs runs/unit-pairs/vq1024 \
        --out runs/units/vq1024-p2-dec.safetensors

(k-means units, and evaluating any codec: `deeptalk-codec fit-units`, `deeptalk-codec eval`.)
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from deeptalk.speech import unit_decoder_train
    from deeptalk.training import units_data, units_vq_fit

    ap = argparse.ArgumentParser(prog="deeptalk-units", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    units_vq_fit.add_parser(sub)
    units_data.add_parser(sub)
    unit_decoder_train.add_parser(sub, name="train-decoder")
    args = ap.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
