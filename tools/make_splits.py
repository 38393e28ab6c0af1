"""Make (or check) a content-disjoint split file (see data/splits.py).

    python -m tools.make_splits --dataset kadid10k --data_root datasets --out splits/kadid10k.json [--n_splits 10]
"""
from __future__ import annotations

import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split

import argparse
import logging

from data.datasets import PRESETS, read_labels
from data.splits import PARTS, load_or_create_splits
from options.base_options import check_options, group_parser
from options.data_options import LabelFields, SplitMakingFields, parse_ratios, preset_paths
from options.defaults import SEED
from utils.errors import AHIQError, run_cli


def make_splits_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Make (or check) a content-disjoint split file for a label file.",
                                parents=[group_parser(LabelFields, SplitMakingFields)])
    p.add_argument("--labels", default=None, help="label file; default: the preset's under --data_root")
    p.add_argument("--out", required=True, help="the split file to write (an existing one is only checked)")
    p.add_argument("--seed", type=int, default=SEED, help="seed, when --split_seed is not given")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = make_splits_parser().parse_args(argv)
    check_options(opt, LabelFields, SplitMakingFields)
    if opt.labels is None and opt.data_root is None:
        raise AHIQError("give --labels FILE, or --dataset with --data_root")
    preset = PRESETS[opt.dataset]
    path = opt.labels or preset_paths(opt.dataset, opt.data_root)["train_list"]  # a missing file is named below
    labels = read_labels(path, opt.list_format or preset.list_format, preset.ref_rule)
    splits = load_or_create_splits(opt.out, labels, parse_ratios(opt.split_ratios), opt.n_splits,
                                   opt.seed if opt.split_seed is None else opt.split_seed)
    for k, s in enumerate(splits):
        parts = {p: set(s[p]) for p in PARTS}
        rows = {p: sum(r in parts[p] for r in labels.refs) for p in PARTS}
        print(f"split {k}: references " + " / ".join(f"{p} {len(s[p])}" for p in PARTS)
              + "; images " + " / ".join(f"{p} {rows[p]}" for p in PARTS))
    return splits


if __name__ == "__main__":
    run_cli(main)
