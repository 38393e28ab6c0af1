"""test.py options: the official test options (names, defaults) and the project's additions."""
from __future__ import annotations

import argparse

from options.base_options import PATH_DEFAULTS, base_parser, finalize


def test_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Score a list of distorted/reference pairs with AHIQ.",
                                parents=[base_parser()], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("test")
    g.add_argument("--test_ref_path", default=PATH_DEFAULTS["test_ref_path"], help="folder of the reference images")
    g.add_argument("--test_dis_path", default=PATH_DEFAULTS["test_dis_path"], help="folder of the distorted images")
    g.add_argument("--test_list", default=PATH_DEFAULTS["test_list"],
                   help="labels: 'name,MOS' or 'name' lines, or a CSV with --list_format csv")
    g.add_argument("--split_part", default="test", choices=("train", "val", "test", "all"),
                   help="with --split_file/--split_column: the part of the split to score")
    g.add_argument("--batch_size", type=int, default=10, help="images per batch")
    g.add_argument("--test_file_name", default="results.txt",
                   help="predictions file, written to checkpoints_dir/name/")
    g.add_argument("--n_ensemble", type=int, default=20,
                   help="crops averaged per image: 1 centre, 2-9 fixed windows, more: seeded random windows")
    g.add_argument("--flip", action="store_true", help="flip both images horizontally before cropping")
    g.add_argument("--crops_per_forward", type=int, default=50, help="crop pairs per model forward (memory bound)")
    g.add_argument("--submission", default=None, metavar="DIR",
                   help="also write the NTIRE 2022 package (output.txt, readme.txt, submission.zip) to DIR")
    return p


def parse_test_options(argv: list[str] | None = None) -> argparse.Namespace:
    return finalize(test_parser().parse_args(argv))
