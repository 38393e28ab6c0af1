"""Options every entry point shares (the run, the model) and how options become a frozen run configuration.

Parsers are built from small parents (``parents=[run_parser(), model_parser(), ...]``), so each option is defined
once, with its default and its policy beside it (options/policy.py: RESULT, RESUMABLE, FREE or ONCE).

:func:`parse` turns the command line (and ``--config FILE``) into a frozen dataclass made from the parser's options:
checked and resolved once (dataset preset paths), never written afterwards. What is derived from it (run folder,
GPU ids, the model switches given) are properties computed from its fields; what depends on the machine (the
device of a rank, the autocast dtype) is computed by engine/runtime.py and utils/device.py and passed as values.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from data.images import MAX_PIXELS
from models import BRANCHES, DEFORM_IMPLS, FUSIONS, POOLINGS, RESNET_TAG, ModelConfig
from models.config import check_crop
from options.defaults import CHECKPOINTS, PROTOCOL_NAME, RELEASED_NAME, SEED, TRAIN_NAME, check_home
from options.policy import ONCE, free, once, policy
from utils.device import check_gpus, default_gpu_ids, default_workers
from utils.errors import AHIQError
from utils.files import read_text


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("run")
    once(g.add_argument("--config", default=None, metavar="FILE",
                        help="rerun from a saved opt_*.json of a run folder; options given on the command line win"))
    free(g.add_argument("--checkpoints_dir", default=CHECKPOINTS,
                        help="runs are stored in checkpoints_dir/name (default: the checkout's, or $AHIQ_HOME's)"))
    free(g.add_argument("--name", default=None,
                        help=f"the run folder under --checkpoints_dir (train.py: {TRAIN_NAME}, protocol.py: "
                             f"{PROTOCOL_NAME}; test.py, predict.py: the folder of --ckpt, else {RELEASED_NAME}, the "
                             "released model's)"))
    free(g.add_argument("--load_epoch", type=int, default=-1,
                        help="load epoch_N.pth of the run folder; -1: best.pth, else the latest epoch, else the "
                             "only .pth"))
    free(g.add_argument("--ckpt", default=None, help="checkpoint file to load (official or ours), instead of the run "
                                                     "folder"))
    g.add_argument("--seed", type=int, default=SEED, help="random seed")
    free(g.add_argument("--gpu_ids", default=default_gpu_ids(),
                        help="GPU ids, e.g. '0' or '0,1'; '-1' runs on the CPU (default: GPU 0 if there is one)"))
    free(g.add_argument("--num_workers", type=int, default=default_workers(),
                        help="DataLoader worker processes (default: this machine's cores, at most 8)"))
    free(g.add_argument("--max_pixels", type=int, default=MAX_PIXELS,
                        help="images with more pixels are refused from their header (damaged or hostile files)"))
    g.add_argument("--amp", action="store_true", help="mixed precision on CUDA (see --amp_dtype); fp32 otherwise")
    g.add_argument("--amp_dtype", default="bf16", choices=("bf16", "fp16"),
                   help="autocast dtype for --amp; in training fp16 adds a GradScaler")
    g.add_argument("--tf32", action="store_true", default=True,
                   help="TF32 matrix products and convolutions on CUDA (the default), as the official code's PyTorch "
                        "1.10 ran them: faster fp32")
    g.add_argument("--no_tf32", dest="tf32", action="store_false", help="strict fp32 on CUDA (no TF32)")
    return p


SWITCHES = tuple(f.name for f in dataclasses.fields(ModelConfig))  # every ModelConfig field is an option


def model_parser() -> argparse.ArgumentParser:
    """The model switches and where the backbone weights come from.

    The switches' defaults are those of NEW runs (train.py, protocol.py, a scorer without a checkpoint): edit one here
    for an ablation and the run's checkpoints carry it. Scoring a checkpoint uses the architecture saved in it (the
    paper's, :data:`models.config.PAPER`, for official and pyiqa files); a switch given on the command line must agree
    with it.
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model (new runs; a checkpoint is scored with its own)")
    g.add_argument("--patch_size", type=int, default=8, choices=(8, 16), help="ViT patch size")
    g.add_argument("--crop_size", type=int, default=224,
                   help="crop side, a multiple of --patch_size (scoring: the checkpoint's unless given)")
    g.add_argument("--vit_name", default=None, help="timm ViT name with its tag; None: the pinned tag of --patch_size")
    g.add_argument("--resnet_name", default=RESNET_TAG, help="timm ResNet name with its tag")
    g.add_argument("--vit_blocks", default="0,1,2,3,4", help="increasing ViT blocks whose outputs are used")
    g.add_argument("--cnn_blocks", default="layer1.0,layer1.1,layer1.2", help="ResNet blocks used, all of one stage")
    g.add_argument("--fusion", default="deform", choices=FUSIONS, help="how CNN features are fused")
    g.add_argument("--branches", default="hybrid", choices=BRANCHES, help="feature branches feeding the head")
    g.add_argument("--pooling", default="weighted", choices=POOLINGS,
                   help="weighted: sum(f*w)/sum(w) over patches (paper); mean: the plain mean of f")
    g.add_argument("--head_width", type=int, default=256,
                   help="channels of the fusion and the head: w, 2w, 4w (the paper: 256)")
    g = p.add_argument_group("backbone weights and kernels")
    free(g.add_argument("--vit_weights", default=None,
                        help="ViT weights from a local timm state dict (.pth/.safetensors) instead of the hub"))
    free(g.add_argument("--resnet_weights", default=None,
                        help="ResNet weights from a local timm state dict (.pth/.safetensors) instead of the hub"))
    g.add_argument("--no_pretrained", action="store_true",
                   help="random backbones drawn from --seed (tests, offline demos): scores are meaningless")
    free(g.add_argument("--allow_other_backbones", action="store_true",
                        help="score or resume a checkpoint with backbone weights other than those it was trained on "
                             "(refused otherwise: the scores would mean something else)"))
    free(g.add_argument("--deform_impl", default="gemm", choices=DEFORM_IMPLS,
                        help="deformable conv: 'gemm' (bilinear sampling + GEMM; faster, autocast-friendly) or "
                             "torchvision's kernel; both compute the same function"))
    return p


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default once, where it means something: not for switches (their default is 'off', or the
    other switch's), not for None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Base of the frozen configurations :func:`parse` makes: each entry point's class (``TrainConfig``,
    ``TestConfig``, ...) combines the typed field groups of its parsers (``RunFields``, ``ModelFields``, ...), so an
    editor finds every option's field, type and users; ``parser`` is the entry point's parser, where each option's
    default, help and policy stand. Derived values are properties of the groups."""

    parser: ClassVar[Callable[[], argparse.ArgumentParser]]
    switches_given: tuple[str, ...] = ()  # the model switches given on the command line or in --config (ONCE)

    def policy(self, name: str) -> str:
        return _policies(type(self))[name]

    def fields(self, *policies: str) -> list[str]:
        return [name for name, pol in _policies(type(self)).items() if pol in policies]

    def values(self, *policies: str) -> dict[str, Any]:
        """The options of these policies by name (e.g. RESULT: what a continued job must keep)."""
        return {name: getattr(self, name) for name in self.fields(*policies)}

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON values (what opt_*.json and checkpoints hold)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


@functools.cache
def _policies(cls: type[RunConfig]) -> dict[str, str]:
    return {**{a.dest: policy(a) for a in options_of(cls.parser())}, "switches_given": ONCE}


@dataclass(frozen=True, kw_only=True)
class RunFields:
    """:func:`run_parser`'s options."""

    config: str | None
    checkpoints_dir: str
    name: str | None
    load_epoch: int
    ckpt: str | None
    seed: int
    gpu_ids: str
    num_workers: int
    max_pixels: int
    amp: bool
    amp_dtype: str
    tf32: bool

    @property
    def run_dir(self) -> str:
        """checkpoints_dir/name; without a name (test.py, predict.py): the folder of --ckpt, whose outputs go beside
        it, else the released model's."""
        if self.name is None:
            if self.ckpt:
                return os.path.dirname(os.path.abspath(self.ckpt))
            return os.path.join(self.checkpoints_dir, RELEASED_NAME)
        return os.path.join(self.checkpoints_dir, self.name)

    @property
    def gpu_list(self) -> tuple[int, ...]:
        try:
            return tuple(int(i) for i in str(self.gpu_ids).split(",") if i.strip() and int(i) >= 0)
        except ValueError:
            raise AHIQError(f"--gpu_ids {self.gpu_ids!r}: expected comma-separated integers, e.g. 0 or 0,1 or "
                            "-1") from None


@dataclass(frozen=True, kw_only=True)
class ModelFields:
    """:func:`model_parser`'s options."""

    patch_size: int
    crop_size: int
    vit_name: str | None
    resnet_name: str
    vit_blocks: tuple[int, ...]
    cnn_blocks: tuple[str, ...]
    fusion: str
    branches: str
    pooling: str
    head_width: int
    vit_weights: str | None
    resnet_weights: str | None
    no_pretrained: bool
    allow_other_backbones: bool
    deform_impl: str

    @property
    def model_switches(self) -> dict[str, Any]:
        """Every model switch with its value (given or default): the architecture of a new run."""
        return {k: getattr(self, k) for k in SWITCHES if getattr(self, k) is not None}

    @property
    def given_switches(self) -> dict[str, Any]:
        """The model switches given on the command line or in ``--config``: what a checkpoint must agree with (the
        configuration's ``switches_given``, :class:`RunConfig`)."""
        return {k: getattr(self, k) for k in self.switches_given if getattr(self, k) is not None}


def options_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's options, one per destination (``--no_tf32`` sets the field of ``--tf32``)."""
    first = {}
    for a in parser._actions:
        if a.dest not in ("help", argparse.SUPPRESS):
            first.setdefault(a.dest, a)
    return list(first.values())


def freeze(cls: type[RunConfig], values: Mapping[str, Any]) -> RunConfig:
    """The frozen ``cls`` holding ``values`` (lists become tuples). Its fields are exactly its parser's options and
    ``switches_given`` (:func:`parse_with_config`); a difference is a programming error, named."""
    names = {f.name for f in dataclasses.fields(cls)}
    options = {a.dest for a in options_of(cls.parser())} | {"switches_given"}
    if names != options:
        raise RuntimeError(f"{cls.__name__}: fields without an option {sorted(names - options)}, options without a "
                           f"field {sorted(options - names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; with ``--config FILE`` (a saved ``opt_*.json``) its values are the defaults, so every option
    given on the command line overrides it. ``ONCE`` options and saved options this parser lacks are ignored."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    config = pre.parse_known_args(argv)[0].config
    values: dict[str, Any] = {}
    if config:
        try:
            saved = json.loads(read_text(config))
        except (OSError, ValueError) as err:
            raise AHIQError(f"{config}: cannot be read as a saved configuration ({err}); pass an opt_*.json from "
                            "a run folder") from None
        if not isinstance(saved, dict):
            raise AHIQError(f"{config}: not a saved configuration (expected a JSON object of options)")
        rerun = {a.dest: a for a in options_of(parser) if policy(a) != ONCE}
        unknown = sorted(set(saved) - {a.dest for a in options_of(parser)} - {"switches_given"})
        if unknown:  # e.g. train.py's options in a test.py rerun: said, never silently dropped
            logging.getLogger("ahiq").warning("%s: %d option(s) that %s does not take are not used: %s", config,
                                              len(unknown), parser.prog, ", ".join(unknown))
        if isinstance(saved.get("gpu_ids"), int) and not isinstance(saved["gpu_ids"], bool):
            saved["gpu_ids"] = str(saved["gpu_ids"])  # "gpu_ids": -1 written by hand means --gpu_ids -1
        values = {k: v for k, v in saved.items() if k in rerun and not (k in SWITCHES and v is None)}  # None: older
        given_then = saved.get("switches_given")  # files written before it hold None for a switch not given
        for key, value in values.items():
            check_saved_value(rerun[key], value, f"{config}: {key!r}")
        parser.set_defaults(**values)
        if isinstance(given_then, list):
            values = {k: v for k, v in values.items() if k not in SWITCHES or k in given_then}
    switches = [a.dest for a in options_of(parser) if a.dest in SWITCHES]
    unset = object()  # argparse leaves attributes already in the namespace alone: what stays unset was not given
    opt = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(switches, unset)))
    for name in switches:
        if getattr(opt, name) is unset:
            setattr(opt, name, parser.get_default(name))
        elif name not in values:
            values[name] = getattr(opt, name)
    opt.switches_given = tuple(name for name in switches if name in values)
    return opt


def _json_type(value: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def check_saved_value(action: argparse.Action, value: Any, where: str) -> None:
    """A value read from a saved configuration has the type and choices its option takes on the command line (JSON
    says 32.0, "false" or null where the command line could not); an error names the file, the key and the value."""
    def fail(expected: str) -> None:
        raise AHIQError(f"{where} is {json.dumps(value)} ({_json_type(value)}), expected {expected}; fix the file or "
                        f"give --{action.dest} on the command line")

    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            fail("true or false")
        return
    if value is None:
        if action.default is not None or action.required:
            fail(f"a value (its default is {action.default!r})")
        return
    items = value if action.nargs not in (None, "?") else [value]
    if action.nargs not in (None, "?"):
        if not isinstance(value, list):
            fail("a list")
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            fail(f"a list of {action.nargs}")
    for item in items:
        if action.type is int and (isinstance(item, bool) or not isinstance(item, int)):
            fail("an integer")
        if action.type is float and (isinstance(item, bool) or not isinstance(item, (int, float))
                                     or not math.isfinite(item)):
            fail("a finite number")
        if action.type is None and not isinstance(item, str) and not (
                action.dest in ("vit_blocks", "cnn_blocks") and isinstance(item, list)):  # saved as lists
            fail("a string")
        if action.choices is not None and item not in action.choices:
            fail(f"one of {', '.join(map(str, action.choices))}")


def check_positive(opt: argparse.Namespace, *names: str, minimum: int = 1) -> None:
    for name in names:
        value = getattr(opt, name, None)
        if value is not None and value < minimum:
            raise AHIQError(f"--{name} must be at least {minimum}, got {value}")


def parse(cls: type[RunConfig], argv: list[str] | None, resolve: tuple = ()) -> RunConfig:
    """The frozen ``cls`` of ``argv`` parsed by ``cls.parser()`` (with ``--config``); see :func:`build`."""
    return build(cls, vars(parse_with_config(cls.parser(), argv)), resolve)


def build(cls: type[RunConfig], values: Mapping[str, Any], resolve: tuple = ()) -> RunConfig:
    """The frozen ``cls`` holding ``values``: checked, then the ``resolve`` functions applied (each takes and changes
    the namespace, e.g. the dataset preset), then frozen. Nothing is built or loaded."""
    check_home()
    opt = argparse.Namespace(**values)
    if opt.crop_size is not None:
        check_crop(opt.crop_size, opt.patch_size)
    check_positive(opt, "crops_per_forward", "batch_size", "val_batch_size", "n_ensemble", "num_avg_val")
    check_positive(opt, "num_workers", minimum=0)
    check_positive(opt, "max_pixels")
    if not 0 <= opt.seed < 2 ** 32:
        raise AHIQError(f"--seed {opt.seed}: give an integer from 0 to {2 ** 32 - 1} (numpy's seed range)")
    _switch_lists(opt)
    for step in resolve:
        step(opt)
    cfg = freeze(cls, vars(opt))
    check_gpus(cfg.gpu_list, cfg.gpu_ids)
    return cfg


def _switch_lists(opt: argparse.Namespace) -> None:
    """--vit_blocks and --cnn_blocks as tuples ('0,1,2' on the command line; a list in a saved configuration)."""
    if isinstance(opt.vit_blocks, str):
        try:
            opt.vit_blocks = tuple(int(b) for b in opt.vit_blocks.split(","))
        except ValueError:
            raise AHIQError(f"--vit_blocks {opt.vit_blocks!r}: expected comma-separated block indices, e.g. "
                            "0,1,2,3,4") from None
    for name, kind in (("vit_blocks", int), ("cnn_blocks", str)):
        value = getattr(opt, name)
        if isinstance(value, (list, tuple)) and not all(isinstance(b, kind) and not isinstance(b, bool)
                                                        for b in value):
            raise AHIQError(f"--{name} {value!r}: expected a list of block {'indices' if kind is int else 'names'}")
    if isinstance(opt.cnn_blocks, str):
        opt.cnn_blocks = tuple(b.strip() for b in opt.cnn_blocks.split(","))
