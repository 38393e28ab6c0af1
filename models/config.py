"""The architecture of one AHIQ model as data, and the one way from a checkpoint to a ready model.

:class:`ModelConfig` holds everything that decides the architecture (patch size, pinned backbone tags, which blocks
feed the model, fusion, branches, pooling) and the crop size it was trained at. Every checkpoint this project writes
stores it (``ckpt["ahiq"]["model"]``), so an ablation's checkpoint is scored with no switches at all:
:func:`read_checkpoint` + :func:`build_checkpoint_model` rebuild exactly what was trained (and its backbones are
checked against the ones recorded). A switch that is given AND contradicts the checkpoint is an
error naming both values. Official and pyiqa files carry no configuration: they are the paper's model, with the
patch size given (default 8).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from models.ahiq import AHIQ, BRANCHES, FUSIONS, POOLINGS
from models.backbones import CNN_BLOCKS, RESNET_TAG, VIT_BLOCKS, VIT_TAGS, build_backbones
from models.tiny import TINY_RESNET, TINY_VIT
from models.weights import weight_files
from utils.checkpoint import load_checkpoint, load_head_weights, meta_of
from utils.errors import AHIQError
from utils.values import expected, hint_of

CHOICES = {"fusion": FUSIONS, "branches": BRANCHES, "pooling": POOLINGS}


def check_crop(crop_size: int, patch_size: int) -> None:
    """Crops are square and tile the ViT's patch grid exactly."""
    if not isinstance(crop_size, int) or crop_size <= 0 or crop_size % patch_size:
        raise AHIQError(f"crop_size {crop_size!r} must be a positive multiple of patch_size {patch_size}")


@dataclass(frozen=True)
class ModelConfig:
    """Defaults: the paper's model (ViT-B/8 blocks 0-4 + ResNet-50 layer1, deformable fusion, weighted pooling)."""

    patch_size: int = 8
    vit_name: str | None = None  # timm name with pinned tag; None: the tag of VIT_TAGS[patch_size]
    resnet_name: str = RESNET_TAG
    vit_blocks: tuple[int, ...] = VIT_BLOCKS
    cnn_blocks: tuple[str, ...] = CNN_BLOCKS
    fusion: str = "deform"
    branches: str = "hybrid"
    pooling: str = "weighted"
    crop_size: int = 224
    head_width: int = 256  # the fusion's and the head's channels: w, 2w, 4w (the paper's 256; the tests' tiny 16)

    def __post_init__(self) -> None:
        self._check_types()
        object.__setattr__(self, "vit_blocks", tuple(self.vit_blocks))
        object.__setattr__(self, "cnn_blocks", tuple(self.cnn_blocks))
        if self.vit_name is None:  # the pinned ViT of the patch size (_check_types: one of VIT_TAGS)
            object.__setattr__(self, "vit_name", VIT_TAGS[self.patch_size])
        if self.branches == "vit" and self.fusion != "none":  # no CNN branch: nothing to fuse
            object.__setattr__(self, "fusion", "none")
        self.check()

    def _check_types(self) -> None:
        """Every field has its type and choices (a checkpoint's metadata may say "8" or 32.0; a patch size without a
        ViT name: one of the pinned ViTs'), and the backbone names are timm model names (never a hub location a file
        could choose: "hf-hub:...")."""
        pinned = {"patch_size": tuple(VIT_TAGS)} if self.vit_name is None else {}  # other ViTs: other patch sizes
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = CHOICES.get(f.name) or pinned.get(f.name)
            problem = expected(hint_of(f), value, choices, minimum=1 if f.type == "int" else None)
            if problem is None and f.name.endswith("_name") and value is not None and (":" in value or "/" in value):
                problem = "a timm model name"
            if problem:
                raise AHIQError(f"model setting {f.name} {value!r}: expected {problem}")

    def check(self) -> None:
        blocks = self.vit_blocks
        if not blocks or any(b >= a for b, a in zip(blocks, blocks[1:])) or min(blocks) < 0:
            raise AHIQError(f"vit_blocks {','.join(map(str, blocks))}: give increasing block indices without "
                            "repeats, e.g. 0,1,2,3,4 (the features are concatenated in block order)")
        if self.branches == "cnn" and self.fusion == "deform":
            raise AHIQError("branches cnn cannot use fusion deform (its offsets come from the ViT); "
                            "pass fusion conv or none")
        check_crop(self.crop_size, self.patch_size)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**d, "vit_blocks": list(self.vit_blocks), "cnn_blocks": list(self.cnn_blocks)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "") -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise AHIQError(f"unknown model settings {unknown}; written by a newer AHIQ version?", source=source)
        return cls(**d)  # lists become tuples in __post_init__, the one place

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


PAPER = ModelConfig()  # the paper's model: what official and pyiqa files (which hold no configuration) are

ARCH_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "crop_size")


def config_from_checkpoint(ckpt: Mapping[str, Any], path: str) -> ModelConfig | None:
    """The configuration a checkpoint was trained with; None for official and pyiqa files (they hold none)."""
    meta = meta_of(ckpt)
    if not meta:
        return None
    problem = None
    try:
        if isinstance(meta.get("model"), Mapping):
            return ModelConfig.from_dict(meta["model"], path)
        if isinstance(meta.get("arch"), Mapping):  # format 1: switches without backbone names (the pinned ones)
            arch = dict(meta["arch"])
            keep = {k: v for k, v in arch.items() if k in ARCH_FIELDS and v is not None}
            return ModelConfig(**{**keep, "patch_size": meta.get("patch_size", arch.get("patch_size", 8))})
        if "model" in meta or "arch" in meta:
            problem = f"'model' is {type(meta.get('model', meta.get('arch'))).__name__}, not the settings AHIQ writes"
    except AHIQError as err:
        if err.source is not None:
            raise
        problem = str(err)
    if problem:
        raise AHIQError(f"its metadata is not what AHIQ writes ({problem}); not a checkpoint of this project",
                        source=path)
    return None


# Backbones a checkpoint may name by itself: the pinned tags and the project's tiny test backbones.
TRUSTED_BACKBONES = frozenset([*VIT_TAGS.values(), RESNET_TAG, *TINY_VIT.values(), TINY_RESNET])


def merge_config(saved: ModelConfig | None, given: Mapping[str, Any], path: str | None) -> ModelConfig:
    """The checkpoint's configuration with the switches the user gave (``given`` holds only those).

    A given switch that contradicts the checkpoint stops with one line naming both values; ``crop_size`` is not an
    architecture switch (any multiple of the patch size can be scored) and simply replaces the trained one.
    """
    if saved is None:  # an official or pyiqa file: the paper's model
        return PAPER.replace(**given)
    for name in ("vit_name", "resnet_name"):  # a file never chooses which weights are fetched
        value = getattr(saved, name)
        if value not in TRUSTED_BACKBONES and given.get(name) != value:
            raise AHIQError(f"{path}: names the backbone {value} ({name}), not a pinned one (models/weights.tsv); "
                            f"to use it, say so: give {name} {value} (with its weights file, or no_pretrained)")
    for name, value in given.items():
        ours = getattr(saved, name)
        if name != "crop_size" and _normal(value) != _normal(ours):
            raise AHIQError(f"{path}: trained with {name} {_shown(ours)}, but {name} {_shown(value)} was given; "
                            "drop it to use the checkpoint's (it is read from the file)")
    return saved.replace(**{k: v for k, v in given.items() if k == "crop_size"})


def _normal(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@dataclass(frozen=True)
class BackboneSource:
    """Where the frozen backbones' weights come from: an explicit file, else the file download.sh put in
    ``checkpoints_dir`` for a pinned tag (models/weights.tsv), else the hub when ``pretrained``, else random (tests,
    offline demos)."""

    pretrained: bool = True
    vit_file: str | None = None
    resnet_file: str | None = None
    checkpoints_dir: str | None = None

    def files(self, config: ModelConfig) -> tuple[str | None, str | None]:
        found = [explicit or self._downloaded(tag) for explicit, tag in
                 ((self.vit_file, config.vit_name), (self.resnet_file, config.resnet_name))]
        return found[0], found[1]

    def _downloaded(self, tag: str) -> str | None:
        row = weight_files().get(tag)
        if not self.pretrained or self.checkpoints_dir is None or row is None:
            return None
        path = os.path.join(self.checkpoints_dir, row.path)
        return path if os.path.isfile(path) else None


def build_from_config(config: ModelConfig, source: BackboneSource = BackboneSource(), deform_impl: str = "gemm",
                      seed: int | None = None) -> AHIQ:
    """The model ``config`` describes, with :attr:`AHIQ.backbones` recording where its backbone weights came from.
    ``seed``: random weights (backbones without files, the head) drawn from it, the global RNG left as it was:
    train.py and every scorer then build the same random backbones."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _build(config, source, deform_impl, seed)
    return _build(config, source, deform_impl, None)


def _build(config: ModelConfig, source: BackboneSource, deform_impl: str, seed: int | None) -> AHIQ:
    vit_file, resnet_file = source.files(config)
    vit, cnn = build_backbones(config.patch_size, source.pretrained, vit_file, resnet_file, config.vit_name,
                               config.resnet_name, config.vit_blocks, config.cnn_blocks,
                               use_vit=config.branches != "cnn", use_cnn=config.branches != "vit")
    try:
        model = AHIQ(vit, cnn, config, deform_impl)
    except ValueError as err:  # e.g. CNN blocks of a stage coarser than the ViT grid
        raise AHIQError(f"these model options do not fit together: {err}") from None
    for part, net, file, tag in (("vit", vit, vit_file, config.vit_name), ("cnn", cnn, resnet_file,
                                                                           config.resnet_name)):
        if net is not None:
            origin = ({"source": "file", "file": os.path.basename(file)} if file else
                      {"source": "hub", "tag": tag} if source.pretrained else {"source": "random", "seed": seed})
            model.backbones[part] = {**origin, "digest": weights_digest(net)}
    return model


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of a module's weights and buffers as loaded: names, shapes, dtypes and values. The same
    weights give the same digest whether they came from the hub, a .pth or a .safetensors file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def describe_backbone(record: Mapping[str, Any]) -> str:
    """One backbone record of :attr:`AHIQ.backbones` in words."""
    source = record.get("source")
    where = {"file": f"from the file {record.get('file')}", "hub": f"the hub's {record.get('tag')}",
             "random": f"random (seed {record.get('seed')})"}.get(source, str(source))
    return f"{where}, digest {record.get('digest')}"


def check_backbones(model: AHIQ, ckpt: Mapping[str, Any], path: str) -> None:
    """A checkpoint that records its backbones (this project's, since they are recorded) is used only with the same
    backbone weights: the scores of a head mean nothing on other features. Official and pyiqa files record none."""
    meta = meta_of(ckpt)
    saved = meta.get("backbones")
    if saved is None:
        if "epochs_trained" in meta:  # this project's, from before the record or edited
            logging.getLogger("ahiq.models").warning(
                "%s: records no backbones (written before they were recorded, or edited): whether it is scored on "
                "the backbones it was trained on cannot be checked", path)
        return
    if not isinstance(saved, Mapping) or not all(isinstance(r, Mapping) and isinstance(r.get("digest"), str)
                                                 for r in saved.values()):
        raise AHIQError(f"{path}: its metadata 'backbones' is not what AHIQ writes; not a checkpoint of this project")
    for part, now in model.backbones.items():
        then = saved.get(part)
        if then is not None and then["digest"] != now["digest"]:
            raise AHIQError(f"{path}: trained on the {part} backbone {describe_backbone(then)}, but this run built "
                            f"{describe_backbone(now)}; give the same weights (--no_pretrained with the same --seed, "
                            "the same file, or the hub's), or pass --allow_other_backbones / allow_other_backbones="
                            "True to use these anyway")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read (its dict and the architecture it describes) before anything slow is built; ``path`` and
    ``state`` None: no file (a random head: tests, ``pretrained=False``)."""

    path: str | None
    state: dict | None
    config: ModelConfig


def read_checkpoint(path: str | None, given: Mapping[str, Any] | None = None,
                    new: Mapping[str, Any] | None = None) -> Checkpoint:
    """The one checkpoint reader (train.py's resume, test.py, predict.py, protocol.py, the API, the hub): the file's
    dict and the architecture to build, checked against the switches ``given`` (:func:`merge_config`). No file
    (``path`` None): the architecture ``new`` describes (a new run's switches), else the paper's."""
    if path is None:
        return Checkpoint(None, None, PAPER.replace(**(new or given or {})))
    state = load_checkpoint(path)
    return Checkpoint(path, state, merge_config(config_from_checkpoint(state, path), dict(given or {}), path))


def build_checkpoint_model(checkpoint: Checkpoint, source: BackboneSource = BackboneSource(), deform_impl: str = "gemm",
                           seed: int | None = None, allow_other_backbones: bool = False) -> AHIQ:
    """The one builder: the model a :class:`Checkpoint` describes, its trained parts loaded and its backbones checked
    against the ones it was trained on (:func:`check_backbones`; ``allow_other_backbones`` skips that), in eval
    mode on the CPU."""
    model = build_from_config(checkpoint.config, source, deform_impl, seed)
    if checkpoint.state is not None:
        if not allow_other_backbones:
            check_backbones(model, checkpoint.state, checkpoint.path)
        load_head_weights(model, checkpoint.state, checkpoint.path)
    return model.eval()
