"""predict.py options: the pairs to score, how scores are reported, and the shared run, model and scoring options."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from data.pairs import PAIR_RULES
from models.ahiq import check_maps
from models.onnx_runtime import BACKENDS
from options.base_options import BackboneFields, ModelFields, RunConfig, RunFields, option, parse
from options.data_options import ImageFields, WindowFields
from options.policy import FREE
from options.test_options import JobFields, ScoringFields
from utils.errors import AHIQError


@dataclass(frozen=True, kw_only=True)
class PairsFields:
    """The pairs predict.py scores and how it reports them."""

    TITLE: ClassVar[str] = "pairs"
    VIEW: ClassVar[str] = "pairing"
    dis: str | None = option(None, "a distorted image (with --ref)")
    ref: str | None = option(None, "its reference image; with --dis_dir: the one reference of every image there")
    dis_dir: str | None = option(None, "a folder of distorted images (with --ref_dir or --ref)")
    ref_dir: str | None = option(None, "the folder of their references (may be --dis_dir itself, as in KADID-10k)")
    pair_rule: str = option("auto", "how --dis_dir images find their reference in --ref_dir: " + "; ".join(
        f"'{k}': {v}" for k, v in PAIR_RULES.items()) + "; 'auto': the first that pairs every image",
                            choices=("auto", *PAIR_RULES))
    identical: bool = option(False, "score each --ref image (or each image of --ref_dir) against itself: what this "
                                    "checkpoint gives an undistorted image (the 'identical images' anchor of its "
                                    "scale)")
    pairs: str | None = option(None, "a CSV with a header naming the distorted and reference columns (dis,ref[,mos]); "
                                     "relative paths from the file's folder, or from --dis_dir/--ref_dir",
                               metavar="FILE")
    csv: str | None = option(None, "also write 'dis,ref,score' rows to this CSV file (with a MOS column in --pairs: "
                                   "its {stem}_metrics.json and {stem}_scatter.png beside it)", policy=FREE)
    data_name: str = option("pairs", "what your pairs are called in the metrics and figures (train.py's and test.py's "
                                     "--dataset is a preset; predict.py has none)", policy=FREE)
    maps: str | None = option(None, "also write per pair a PNG panel of the patch score, weight and contribution maps "
                                    "over the image, and the maps as .npz, to DIR", policy=FREE, metavar="DIR")
    backend: str = option("torch", "'onnxruntime': --ckpt is a file python -m tools.export_onnx wrote, run by ONNX "
                                   "Runtime (the same windows and scores; no --maps)", policy=FREE, choices=BACKENDS)
    mos_scale: bool = option(False, "report scores in MOS units of the training list")
    mos_range: tuple[float, ...] | None = option(None, "training MOS range for --mos_scale when the checkpoint has "
                                                       "none (official files)", nargs=2, metavar=("LO", "HI"))


@dataclass(frozen=True, kw_only=True)
class PredictConfig(PairsFields, JobFields, ScoringFields, BackboneFields, ModelFields, RunFields, WindowFields,
                    ImageFields, RunConfig):
    """predict.py's configuration."""

    DESCRIPTION: ClassVar[str] = "Score your own image pairs with AHIQ (higher is better)."


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
