"""Link the official PIPAL download into the layout train.py reads (see data/prepare_pipal.py and README).

    python -m tools.prepare_pipal --pipal_root /data/PIPAL --out datasets/PIPAL
"""
from __future__ import annotations

from data.prepare_pipal import prepare
from options.tool_options import prepare_pipal_parser
from utils.errors import run_cli


def main(argv: list[str] | None = None) -> dict[str, int]:
    opt = prepare_pipal_parser().parse_args(argv)
    counts = prepare(opt.pipal_root, opt.out, opt.link, opt.test_ref, opt.test_dis)
    for part, n in counts.items():
        print(f"{part}: {n} pairs, all images present")
    if "val" not in counts:
        print(f"no validation/Reference_valid + Distortion_valid under {opt.pipal_root}: validation set skipped")
    print(f"train with: python train.py --dataset pipal --data_root {opt.out}")
    return counts


if __name__ == "__main__":
    run_cli(main)
