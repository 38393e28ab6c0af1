"""Link the official PIPAL download into the layout train.py reads (see data/prepare_pipal.py and README).

    python -m tools.prepare_pipal --pipal_root /data/PIPAL --out datasets/PIPAL
"""
from __future__ import annotations

import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split

import os

from data.prepare_pipal import prepare
from options.tool_options import prepare_pipal_parser
from utils.errors import run_cli


def main(argv: list[str] | None = None) -> dict:
    opt = prepare_pipal_parser().parse_args(argv)
    counts = prepare(opt.pipal_root, opt.out, opt.link, opt.test_ref, opt.test_dis)
    for part in ("train", "val", "test"):
        if part in counts:
            print(f"{part}: {counts[part]} pairs, every distorted image and reference present")
    for part in counts["removed"]:
        print(f"{part}: made by an earlier run, not by this one: its links and list were removed")
    if "val" in counts:
        print(f"train with: sh train.sh (PIPAL={opt.out}), or python train.py --dataset pipal --data_root {opt.out}")
    else:
        print(f"no validation/Reference_valid + Distortion_valid under {opt.pipal_root}: no validation set; train on "
              f"a content-disjoint split of the training set instead: python train.py --dataset pipal --data_root "
              f"{opt.out} --split_file {os.path.join(opt.out, 'splits.json')}")
    if "test" in counts:
        print(f"reproduce the NTIRE 2022 submission with: PIPAL={opt.out} sh test.sh")
    return counts


if __name__ == "__main__":
    run_cli(main)
