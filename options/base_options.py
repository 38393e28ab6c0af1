"""How options are written and become a frozen run configuration; the options every entry point shares (the run,
the model, the backbone weights).

Each option is written once, as a field of an option group (a frozen dataclass): its type (the annotation), default,
help, choices and policy (options/policy.py: RESULT, RESUMABLE, FREE or ONCE), with :func:`option`. An entry point's
configuration class combines groups; its command line is generated from them (:func:`parser_of`), and so are the
defaults the Python API uses (:func:`defaults_of`, no parser). To change an option, edit its field.

:func:`parse` turns the command line (and ``--config FILE``) into the frozen configuration: checked and resolved
once (dataset preset paths), never written afterwards. What is derived from it (run folder, GPU ids, the model
switches given) are properties of the groups; what depends on the machine (the device of a rank, the autocast dtype)
is computed by engine/runtime.py and utils/device.py and passed as values.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from data.images import MAX_PIXELS
from models import BRANCHES, DEFORM_IMPLS, FUSIONS, POOLINGS, RESNET_TAG, VIT_TAGS, ModelConfig
from models.config import check_crop
from options.defaults import CHECKPOINTS, PROTOCOL_NAME, RELEASED_NAME, SEED, TRAIN_NAME, check_home
from options.policy import FREE, ONCE, RESULT, policy
from utils.device import AMP_DTYPES, default_gpu_ids, default_workers, missing_gpu
from utils.errors import AHIQError
from utils.files import read_json
from utils.values import expected as expected_value
from utils.values import hint_of


def option(default: Any = None, help: str = "", *, policy: str = RESULT, choices: Sequence | None = None,
           metavar: str | None = None, nargs: int | str | None = None, factory: Callable[[], Any] | None = None,
           text: bool = False, negative: tuple[str, str] | None = None, repeat: bool = False,
           minimum: float | None = None, maximum: float | None = None, above: float | None = None) -> Any:
    """One option, written once: a field of an option group (a frozen dataclass) with its default (``factory``: a
    default computed when the parser is made, e.g. this machine's GPUs), help, choices and policy
    (options/policy.py). The command-line flag is the field's name; its type comes from the annotation (``text``:
    read as text and converted by :func:`build`); ``negative``: the flag and help that turn a default-on switch off;
    ``repeat``: a list option that may be given several times (each adds its values); ``minimum``, ``maximum``,
    ``above``: the values accepted (``above``: a bound the value must exceed). The parser is generated from these
    fields (:func:`parser_of`); every value, from the command line, a saved configuration or the Python API, is
    checked against them by :func:`check_value`."""
    meta = {"help": help, "policy": policy, "choices": choices, "metavar": metavar, "nargs": nargs, "text": text,
            "negative": negative, "repeat": repeat, "minimum": minimum, "maximum": maximum, "above": above}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The options of a configuration class (its fields made by :func:`option`), in definition order."""
    return [f for f in dataclasses.fields(cls) if "policy" in f.metadata]


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def defaults_of(*groups: type) -> dict[str, Any]:
    """The defaults of the options of these groups, by name, without building a parser (the API, the hub)."""
    return {f.name: default_of(f) for group in groups for f in option_fields(group)}


def _groups(cls: type) -> list[type]:
    """The option groups a configuration class is made of: every class in its MRO with a ``TITLE`` of its own."""
    return [c for c in cls.__mro__ if "TITLE" in c.__dict__]


def _own_options(group: type) -> list[dataclasses.Field]:
    own = group.__dict__.get("__annotations__", {})
    return [f for f in option_fields(group) if f.name in own]


def _add_option(g: argparse._ArgumentGroup, f: dataclasses.Field, hint: Any, default: Any, hidden: bool) -> None:
    m = f.metadata
    kind = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if typing.get_args(hint) and \
        typing.get_origin(hint) is not tuple else hint
    kw: dict[str, Any] = {"default": default, "help": argparse.SUPPRESS if hidden else m["help"]}
    if kind is bool:
        action = g.add_argument(f"--{f.name}", action="store_true", **kw)
        if m["negative"]:
            flag, text = m["negative"]
            g.add_argument(flag, dest=f.name, action="store_false", help=argparse.SUPPRESS if hidden else text)
    else:
        if typing.get_origin(kind) is tuple and not m["text"]:
            kind = typing.get_args(kind)[0]
        if kind in (int, float) and not m["text"]:
            kw["type"] = kind
        for key in ("choices", "metavar", "nargs"):
            if m[key] is not None:
                kw[key] = m[key]
        if m["repeat"]:  # argparse extends a copy of its default, which must be a list (frozen as a tuple)
            kw.update(action="extend", default=list(default))
        action = g.add_argument(f"--{f.name}", **kw)
    action.policy = m["policy"]


def parser_of(cls: type) -> argparse.ArgumentParser:
    """The command line of a configuration class, generated from its option groups (:func:`option`): one argument
    group per group, in the class's order; ``DEFAULTS`` (an entry point's own defaults) and ``HIDDEN`` (groups taken
    but not shown) are class attributes."""
    p = argparse.ArgumentParser(description=getattr(cls, "DESCRIPTION", None), formatter_class=HelpFormatter,
                                add_help="DESCRIPTION" in cls.__dict__)
    defaults, hidden = getattr(cls, "DEFAULTS", {}), getattr(cls, "HIDDEN", ())
    for group in reversed(_groups(cls)):
        g = p.add_argument_group(group.TITLE)
        for f in _own_options(group):
            _add_option(g, f, hint_of(f), defaults.get(f.name, default_of(f)),
                        any(issubclass(group, h) and f.name in h.__dict__.get("__annotations__", {}) for h in hidden))
    return p


def group_parser(*groups: type) -> argparse.ArgumentParser:
    """A parent parser of these option groups (the tools that take a few of them: ``parents=[...]``)."""
    return parser_of(type("Options", groups, {"__module__": __name__}))


@dataclass(frozen=True, kw_only=True)
class RunFields:
    """The run: where it is stored, what it loads, the seed, the devices and precision."""

    TITLE: ClassVar[str] = "run"
    VIEW: ClassVar[str] = "run"
    config: str | None = option(None, "rerun from a saved opt_*.json of a run folder; options given on the command "
                                      "line win", policy=ONCE, metavar="FILE")
    checkpoints_dir: str = option(CHECKPOINTS, "runs are stored in checkpoints_dir/name (default: the checkout's, or "
                                               "$AHIQ_HOME's)", policy=FREE)
    name: str | None = option(None, f"the run folder under --checkpoints_dir (train.py: {TRAIN_NAME}, protocol.py: "
                                    f"{PROTOCOL_NAME}; test.py, predict.py: the folder of --ckpt, else "
                                    f"{RELEASED_NAME}, the released model's)", policy=FREE)
    load_epoch: int = option(-1, "load epoch_N.pth of the run folder; -1: best.pth, else the latest epoch, else the "
                                 "only .pth", policy=FREE)
    ckpt: str | None = option(None, "checkpoint file to load (official or ours), instead of the run folder",
                              policy=FREE)
    seed: int = option(SEED, "random seed", minimum=0, maximum=2 ** 32 - 1)  # numpy's seed range
    gpu_ids: str = option(help="GPU ids, e.g. '0' or '0,1'; '-1' runs on the CPU (default: GPU 0 if there is one)",
                          policy=FREE, factory=default_gpu_ids)
    num_workers: int = option(help="DataLoader worker processes (default: this machine's cores, at most 8)",
                              policy=FREE, factory=default_workers, minimum=0)
    max_pixels: int = option(MAX_PIXELS, "images with more pixels are refused from their header (damaged or hostile "
                                         "files)", policy=FREE, minimum=1)
    dist_timeout: float = option(60, "with torchrun: minutes a process waits for the others at a collective (a scoring "
                                     "job's processes meet once, at its end; training's at every step) before the "
                                     "job fails", policy=FREE, metavar="MINUTES", minimum=1)
    amp: bool = option(False, "mixed precision on CUDA (see --amp_dtype); fp32 otherwise")
    amp_dtype: str = option("bf16", "autocast dtype for --amp; in training fp16 adds a GradScaler",
                            choices=tuple(AMP_DTYPES))
    tf32: bool = option(True, "TF32 matrix products and convolutions on CUDA (the default), as the official code's "
                              "PyTorch 1.10 ran them: faster fp32", negative=("--no_tf32", "strict fp32 on CUDA (no "
                                                                                            "TF32)"))

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
        """The GPUs --gpu_ids names (checked when the configuration was built: :func:`check_gpus`)."""
        return gpu_list(self.gpu_ids)


SWITCHES = tuple(f.name for f in dataclasses.fields(ModelConfig))  # every ModelConfig field is an option


@dataclass(frozen=True, kw_only=True)
class ModelFields:
    """The model switches and where the backbone weights come from.

    The switches' defaults are those of NEW runs (train.py, protocol.py, a scorer without a checkpoint): edit one here
    for an ablation and the run's checkpoints carry it. Scoring a checkpoint uses the architecture saved in it (the
    paper's, :data:`models.config.PAPER`, for official and pyiqa files); a switch given on the command line must agree
    with it.
    """

    TITLE: ClassVar[str] = "model (new runs; a checkpoint is scored with its own)"
    VIEW: ClassVar[str] = "model"
    patch_size: int = option(8, "ViT patch size", choices=tuple(VIT_TAGS))
    crop_size: int = option(224, "crop side, a multiple of --patch_size (scoring: the checkpoint's unless given)")
    vit_name: str | None = option(None, "timm ViT name with its tag; None: the pinned tag of --patch_size")
    resnet_name: str = option(RESNET_TAG, "timm ResNet name with its tag")
    vit_blocks: tuple[int, ...] = option((0, 1, 2, 3, 4), "increasing ViT blocks whose outputs are used, e.g. 0,1,2",
                                         text=True)
    cnn_blocks: tuple[str, ...] = option(("layer1.0", "layer1.1", "layer1.2"), "ResNet blocks used, all of one "
                                         "stage, e.g. layer1.0,layer1.1", text=True)
    fusion: str = option("deform", "how CNN features are fused", choices=FUSIONS)
    branches: str = option("hybrid", "feature branches feeding the head", choices=BRANCHES)
    pooling: str = option("weighted", "weighted: sum(f*w)/sum(w) over patches (paper); mean: the plain mean of f",
                          choices=POOLINGS)
    head_width: int = option(256, "channels of the fusion and the head: w, 2w, 4w (the paper: 256)")


@dataclass(frozen=True, kw_only=True)
class BackboneFields:
    """Where the backbone weights come from and which kernels run: how, not what (except --no_pretrained)."""

    TITLE: ClassVar[str] = "backbone weights and kernels"
    VIEW: ClassVar[str] = "backbone"
    vit_weights: str | None = option(None, "ViT weights from a local timm state dict (.pth/.safetensors) instead of "
                                           "the hub", policy=FREE)
    resnet_weights: str | None = option(None, "ResNet weights from a local timm state dict (.pth/.safetensors) "
                                              "instead of the hub", policy=FREE)
    no_pretrained: bool = option(False, "random backbones drawn from --seed (tests, offline demos): scores are "
                                        "meaningless")
    allow_other_backbones: bool = option(False, "score or resume a checkpoint with backbone weights other than those "
                                                "it was trained on (refused otherwise: the scores would mean "
                                                "something else)", policy=FREE)
    deform_impl: str = option("gemm", "deformable conv: 'gemm' (bilinear sampling + GEMM; faster, autocast-friendly) "
                                      "or torchvision's kernel; both compute the same function", choices=DEFORM_IMPLS,
                              policy=FREE)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default once, where it means something: not for switches (their default is 'off', or the
    other switch's), not for None, not where the help says what it is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help or ""
        if isinstance(action.default, tuple):
            return f"{action.help} (default: {','.join(map(str, action.default)) or 'none'})"
        return super()._get_help_string(action)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Base of the frozen configurations :func:`parse` makes: each entry point's class (``TrainConfig``,
    ``TestConfig``, ...) combines option groups (``RunFields``, ``ModelFields``, ...), each option written once as a
    field (:func:`option`: its type, default, help and policy), and the parser is generated from them
    (:func:`parser_of`). Derived values are properties of the groups. Each group is also there as itself, under
    its ``VIEW`` name (``cfg.model``: a ``ModelFields``, ``cfg.window``, ``cfg.train``, ...): a function that reads
    one group is given and annotated with that group."""

    switches_given: tuple[str, ...] = ()  # the model switches given on the command line or in --config (ONCE)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = {name for group in _groups(cls) for name in group.__dict__.get("__annotations__", {})}
        for group in _groups(cls):
            name = group.__dict__.get("VIEW")
            if name in fields:
                raise TypeError(f"{group.__name__}.VIEW {name!r} is also an option's name")
            if name and name not in cls.__dict__:
                setattr(cls, name, functools.cached_property(functools.partial(_view, group=group)))
                getattr(cls, name).__set_name__(cls, name)

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        return parser_of(cls)

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

    @property
    def model_switches(self) -> dict[str, Any]:
        """Every model switch with its value (given or default): the architecture of a new run."""
        return {k: getattr(self, k) for k in SWITCHES if getattr(self, k) is not None}

    @property
    def given_switches(self) -> dict[str, Any]:
        """The model switches given on the command line or in ``--config``: what a checkpoint must agree with."""
        return {k: getattr(self, k) for k in self.switches_given if getattr(self, k) is not None}


def _view(cfg: RunConfig, group: type) -> Any:
    """``group`` (an option group) holding ``cfg``'s values of its options: what ``cfg.<group.VIEW>`` returns."""
    return group(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(group) if f.init})


@functools.cache
def _policies(cls: type[RunConfig]) -> dict[str, str]:
    return {**{f.name: f.metadata["policy"] for f in option_fields(cls)}, "switches_given": ONCE}


def options_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's options, one per destination (``--no_tf32`` sets the field of ``--tf32``)."""
    first = {}
    for a in parser._actions:
        if a.dest not in ("help", argparse.SUPPRESS):
            first.setdefault(a.dest, a)
    return list(first.values())


def freeze(cls: type[RunConfig], values: Mapping[str, Any]) -> RunConfig:
    """The frozen ``cls`` holding ``values`` (lists become tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})


JSON_KINDS = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
              dict: "an object", type(None): "null"}  # what a saved configuration's value is, in words


def parse_with_config(cls: type[RunConfig], argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; with ``--config FILE`` (a saved ``opt_*.json``) its values are the defaults, so every option
    given on the command line overrides it. ``ONCE`` options and saved options this parser lacks are ignored."""
    parser = cls.parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    config = pre.parse_known_args(argv)[0].config
    values: dict[str, Any] = {}
    if config:
        saved = read_json(config, "a saved configuration of options", "pass an opt_*.json from a run folder")
        rerun = {a.dest: a for a in options_of(parser) if policy(a) != ONCE}
        unknown = sorted(set(saved) - {a.dest for a in options_of(parser)} - {"switches_given"})
        if unknown:  # e.g. train.py's options in a test.py rerun: said, never silently dropped
            logging.getLogger("ahiq").warning("%s: %d option(s) that %s does not take are not used: %s", config,
                                              len(unknown), parser.prog, ", ".join(unknown))
        if isinstance(saved.get("gpu_ids"), int) and not isinstance(saved["gpu_ids"], bool):
            saved["gpu_ids"] = str(saved["gpu_ids"])  # "gpu_ids": -1 written by hand means --gpu_ids -1
        values = {k: v for k, v in saved.items() if k in rerun and not (k in SWITCHES and v is None)}  # None: older
        given_then = saved.get("switches_given")  # files written before it hold None for a switch not given
        hints = option_hints(cls)
        for key, value in values.items():
            kind = JSON_KINDS.get(type(value), type(value).__name__)
            check_value(*hints[key], value, f"{config}: {key!r} is {json.dumps(value)} ({kind})",
                        f"; fix the file or give --{key} on the command line")
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


def expected(f: dataclasses.Field, hint: Any, value: Any) -> str | None:
    """What option ``f`` (annotated ``hint``) expects instead of ``value``, or None when it takes it
    (:func:`utils.values.expected` with the option's choices and range)."""
    m = f.metadata
    if m["text"] and isinstance(value, str):
        return None  # '0,1,2': read by build(), which checks the result
    return expected_value(hint, value, m["choices"], m["minimum"], m["maximum"], m["above"],
                          m["nargs"] if isinstance(m["nargs"], int) else None)


def check_value(f: dataclasses.Field, hint: Any, value: Any, where: str, fix: str = "") -> None:
    """The one check of an option's value, wherever it enters: the command line (``where``: ``--seed 7``), a saved
    configuration (``opt_train.json: 'seed' is 7.0``) or an API setting (``seed=7.0``); ``fix``: what to do, added
    to the message."""
    problem = expected(f, hint, value)
    if problem:
        raise AHIQError(f"{where}: expected {problem}{fix}")


@functools.cache
def option_hints(*groups: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """The options of these groups (or configuration classes) by name, each with its annotation."""
    return {f.name: (f, hint_of(f)) for group in groups for f in option_fields(group)}


def check_options(opt: argparse.Namespace, *groups: type) -> None:
    """The values in ``opt`` of the options of these groups (a configuration class, or the groups a tool's parser
    takes from :func:`group_parser`)."""
    for name, (f, hint) in option_hints(*groups).items():
        value = getattr(opt, name)
        check_value(f, hint, value, f"--{name} {','.join(map(str, value)) if isinstance(value, tuple) else value}")


def parse(cls: type[RunConfig], argv: list[str] | None, resolve: tuple = ()) -> RunConfig:
    """The frozen ``cls`` of ``argv`` parsed by ``cls.parser()`` (with ``--config``); see :func:`build`."""
    return build(cls, vars(parse_with_config(cls, argv)), resolve)


def build(cls: type[RunConfig], values: Mapping[str, Any], resolve: tuple = ()) -> RunConfig:
    """The frozen ``cls`` holding ``values``: checked, then the ``resolve`` functions applied (each takes and changes
    the namespace, e.g. the dataset preset), then frozen. Nothing is built or loaded."""
    check_home()
    opt = argparse.Namespace(**values)
    if opt.crop_size is not None:
        check_crop(opt.crop_size, opt.patch_size)
    _switch_lists(opt)
    check_options(opt, cls)
    for step in resolve:
        step(opt)
    cfg = freeze(cls, vars(opt))
    check_gpus(cfg.gpu_ids)
    return cfg


def gpu_list(gpu_ids: str) -> tuple[int, ...]:
    """The GPU indices of a --gpu_ids value ('0,1'; -1: none)."""
    return tuple(int(i) for i in str(gpu_ids).split(",") if i.strip() and int(i) >= 0)


def check_gpus(gpu_ids: str) -> None:
    """--gpu_ids is comma-separated integers naming GPUs this machine has (or -1)."""
    try:
        problem = next(filter(None, map(missing_gpu, gpu_list(gpu_ids))), None)
    except ValueError:
        problem = "expected comma-separated integers, e.g. 0 or 0,1 or -1"
    if problem:
        raise AHIQError(f"--gpu_ids {gpu_ids}: {problem}; pass existing ids, or --gpu_ids -1 to run on the CPU")


def _switch_lists(opt: argparse.Namespace) -> None:
    """--vit_blocks and --cnn_blocks as tuples ('0,1,2' on the command line; a list in a saved configuration), whose
    items :func:`build` then checks."""
    if isinstance(opt.vit_blocks, str):
        try:
            opt.vit_blocks = tuple(int(b) for b in opt.vit_blocks.split(","))
        except ValueError:
            raise AHIQError(f"--vit_blocks {opt.vit_blocks!r}: expected comma-separated block indices, e.g. "
                            "0,1,2,3,4") from None
    if isinstance(opt.cnn_blocks, str):
        opt.cnn_blocks = tuple(b.strip() for b in opt.cnn_blocks.split(","))
