"""predict.py options: the pairs to score, how scores are reported, and the shared run, model and scoring options."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from data.pairs import PAIR_RULES
from models.ahiq import check_maps
from models.onnx_runtime import BACKENDS
from options.base_options import HelpFormatter, ModelFields, RunConfig, RunFields, model_parser, parse, run_parser
from options.data_options import ImageFields, WindowFields, image_parser, windows_parser
from options.policy import free
from options.test_options import ScoringFields, add_resume, scoring_parser
from utils.errors import AHIQError


def predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Score your own image pairs with AHIQ (higher is better).",
                                parents=[run_parser(), model_parser(), scoring_parser(), windows_parser(),
                                         image_parser()],
                                formatter_class=HelpFormatter)
    g = p.add_argument_group("pairs")
    g.add_argument("--dis", help="a distorted image (with --ref)")
    g.add_argument("--ref", help="its reference image; with --dis_dir: the one reference of every image there")
    g.add_argument("--dis_dir", help="a folder of distorted images (with --ref_dir or --ref)")
    g.add_argument("--ref_dir", help="the folder of their references (may be --dis_dir itself, as in KADID-10k)")
    g.add_argument("--pair_rule", default="auto", choices=("auto", *PAIR_RULES),
                   help="how --dis_dir images find their reference in --ref_dir: " + "; ".join(
                       f"'{k}': {v}" for k, v in PAIR_RULES.items()) + "; 'auto': the first that pairs every image")
    g.add_argument("--identical", action="store_true",
                   help="score each --ref image (or each image of --ref_dir) against itself: what this checkpoint "
                        "gives an undistorted image (the 'identical images' anchor of its scale)")
    g.add_argument("--pairs", metavar="FILE", help="a CSV with a header naming the distorted and reference columns "
                   "(dis,ref[,mos]); relative paths from the file's folder, or from --dis_dir/--ref_dir")
    free(g.add_argument("--csv", help="also write 'dis,ref,score' rows to this CSV file (with a MOS column in --pairs: "
                        "its {stem}_metrics.json and {stem}_scatter.png beside it)"))
    free(g.add_argument("--dataset", default="pairs", help="what your data is called in the metrics and figures"))
    free(g.add_argument("--maps", metavar="DIR", help="also write per pair a PNG panel of the patch score, weight and "
                        "contribution maps over the image, and the maps as .npz, to DIR"))
    free(g.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="'onnxruntime': --ckpt is a file python -m tools.export_onnx wrote, run by ONNX Runtime "
                             "(the same windows and scores; no --maps)"))
    add_resume(g, "--csv (a stopped run without --csv keeps nothing)")
    free(g.add_argument("--overwrite", action="store_true",
                        help="replace an existing --csv file and the maps of the same pairs in --maps (refused "
                             "otherwise)"))
    g.add_argument("--mos_scale", action="store_true", help="report scores in MOS units of the training list")
    g.add_argument("--mapping", default=None, metavar="FILE",
                   help="report scores on the MOS scale of a mapping test.py --fit_mapping saved (a calibrated "
                        "scale of that list)")
    free(g.add_argument("--allow_other_mapping", action="store_true",
                        help="use a --mapping fitted for another model (refused otherwise: another model's scores "
                             "mean something else on that scale)"))
    g.add_argument("--mos_range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="training MOS range for --mos_scale when the checkpoint has none (official files)")
    return p


@dataclass(frozen=True, kw_only=True)
class PredictConfig(RunConfig, RunFields, ModelFields, ScoringFields, WindowFields, ImageFields):
    """predict.py's configuration: :func:`predict_parser`'s options."""

    parser = predict_parser
    dis: str | None
    ref: str | None
    dis_dir: str | None
    ref_dir: str | None
    pair_rule: str
    identical: bool
    pairs: str | None
    csv: str | None
    dataset: str
    maps: str | None
    backend: str
    resume: bool
    overwrite: bool
    mos_scale: bool
    mapping: str | None
    allow_other_mapping: bool
    mos_range: tuple[float, ...] | None


def parse_predict_options(argv: list[str] | None = None) -> PredictConfig:
    opt = parse(PredictConfig, argv)
    given = [f"--{k}" for k in ("dis", "ref", "dis_dir", "ref_dir", "pairs") if getattr(opt, k)]
    if opt.identical:
        if given not in (["--ref"], ["--ref_dir"]):
            raise AHIQError("--identical scores images against themselves: give --ref FILE or --ref_dir DIR alone")
    layouts = {"--pairs FILE": opt.pairs and not (opt.dis or opt.ref),
               "--dis FILE --ref FILE": opt.dis and opt.ref and not (opt.dis_dir or opt.ref_dir or opt.pairs),
               "--dis_dir DIR --ref_dir DIR": opt.dis_dir and opt.ref_dir and not (opt.dis or opt.ref or opt.pairs),
               "--dis_dir DIR --ref FILE": opt.dis_dir and opt.ref and not (opt.dis or opt.ref_dir or opt.pairs),
               "--identical --ref FILE (or --ref_dir DIR)": opt.identical}
    if sum(map(bool, layouts.values())) != 1:
        raise AHIQError(f"give one of: {'; '.join(layouts)} (see python predict.py --help)")
    check_maps(opt.bn_stats, bool(opt.maps))  # at the door, before anything is loaded
    if opt.backend == "onnxruntime" and (opt.maps or not opt.ckpt):
        raise AHIQError("--backend onnxruntime needs --ckpt FILE.onnx (python -m tools.export_onnx) and gives scores "
                        "only (no --maps)")
    if opt.mapping and opt.mos_scale:
        raise AHIQError("give either --mos_scale (the training list's range) or --mapping FILE (a fitted scale), "
                        "not both")
    if opt.load_epoch >= 0 and opt.ckpt:
        raise AHIQError("pass either --ckpt FILE or --load_epoch N (a file of the run folder), not both")
    return opt
