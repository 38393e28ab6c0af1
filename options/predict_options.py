"""predict.py options: the pairs to score, how scores are reported, and the shared run, model and scoring options."""
from __future__ import annotations

import argparse

from options.base_options import RunConfig, model_parser, parse, run_parser
from options.data_options import windows_parser
from options.policy import free
from options.test_options import scoring_parser
from utils.errors import AHIQError


def predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Score your own image pairs with AHIQ (higher is better).",
                                parents=[run_parser(), model_parser(), scoring_parser(), windows_parser()],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("pairs")
    g.add_argument("--dis", help="a distorted image (with --ref)")
    g.add_argument("--ref", help="its reference image")
    g.add_argument("--dis_dir", help="a folder of distorted images (with --ref_dir; matched by file name)")
    g.add_argument("--ref_dir", help="the folder of their references")
    free(g.add_argument("--csv", help="also write 'dis,ref,score' rows to this CSV file"))
    g.add_argument("--mos_scale", action="store_true", help="report scores in MOS units of the training list")
    g.add_argument("--mos_range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="training MOS range for --mos_scale when the checkpoint has none (official files)")
    return p


def parse_predict_options(argv: list[str] | None = None) -> RunConfig:
    opt = parse(predict_parser(), argv)
    if bool(opt.dis) != bool(opt.ref) or bool(opt.dis_dir) != bool(opt.ref_dir) or bool(opt.dis) == bool(opt.dis_dir):
        raise AHIQError("give either --dis FILE --ref FILE, or --dis_dir DIR --ref_dir DIR")
    if opt.load_epoch >= 0 and opt.ckpt:
        raise AHIQError("pass either --ckpt FILE or --load_epoch N (a file of the run folder), not both")
    return opt
