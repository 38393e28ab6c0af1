"""torch.hub entry: ``torch.hub.load("<owner>/AHIQ" or a local checkout, "ahiq", ...)`` gives AHIQ as a metric in
pyiqa's calling convention (:class:`engine.scorer.Metric`): ``metric(dis, ref)`` -> scores, higher is better.

    metric = torch.hub.load("path/to/AHIQ", "ahiq", source="local", device="cuda", n_ensemble=20)
    scores = metric("dis.png", "ref.png")

This checkout's top-level packages have common names (``models``, ``utils``, ``data``, ...). The caller's own modules
of those names stay what they were: the project's modules are imported under a private view of ``sys.modules`` and
refer to each other through the objects they hold, so neither side ever sees the other's.
"""
from __future__ import annotations

import importlib
import os
import sys

import torch

dependencies = ["torch", "torchvision", "timm", "numpy", "cv2", "PIL", "scipy", "safetensors"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def _top_level() -> tuple[str, ...]:
    """The checkout's own top-level modules and packages (folders holding Python files), derived from the checkout
    so that a new one needs no edit here."""
    names = []
    for entry in os.scandir(_HERE):
        if entry.is_file() and entry.name.endswith(".py") and entry.name != "hubconf.py":
            names.append(entry.name[:-3])
        elif entry.is_dir() and not entry.name.startswith(".") and any(
                f.endswith(".py") for f in os.listdir(entry.path)):
            names.append(entry.name)
    return tuple(sorted(names))


_PACKAGES = _top_level()


def _ours(module: object) -> bool:
    return os.path.abspath(getattr(module, "__file__", None) or "/").startswith(_HERE + os.sep)


def _import(name: str):
    """This checkout's module ``name``, imported without replacing or leaving behind any module of the caller's: a
    module of ours already imported (the tests, a script in this folder) is shared, a foreign one of the same name
    is set aside meanwhile and put back, and ours that were not there before are removed from ``sys.modules``."""
    def project(key: str) -> bool:
        return key.split(".")[0] in _PACKAGES

    before = {key: module for key, module in sys.modules.items() if project(key)}
    foreign = {key: module for key, module in before.items() if not _ours(module)}
    for key in foreign:
        del sys.modules[key]
    sys.path.insert(0, _HERE)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(_HERE)
        for key in [key for key in sys.modules if project(key) and key not in before]:
            del sys.modules[key]
        sys.modules.update(foreign)


def ahiq(pretrained: bool = True, device: str = "cpu", n_ensemble: int | None = None, as_loss: bool = False,
         cache_dir: str | None = None, ckpt: str | None = None, vit_weights: str | None = None,
         resnet_weights: str | None = None, tf32: bool = True, allow_other_backbones: bool = False,
         mapping: str | None = None, allow_other_mapping: bool = False, **settings):
    """AHIQ trained on PIPAL (the released NTIRE 2022 checkpoint) on the pinned ViT-B/8 and ResNet-50 backbones.

    ``pretrained``: files not given are fetched into ``cache_dir`` (default: ``torch.hub.get_dir()/ahiq``): the
    released checkpoint with its sha256 checked, the backbone weights with no hash (none is published for them; their
    keys and shapes are checked when loaded); offline, a one-line error says what to do. ``ckpt``, ``vit_weights``,
    ``resnet_weights``: your own files instead. ``pretrained=False``: random backbones, and a random head unless
    ``ckpt`` is given (tests). ``settings``: test.py's scoring options by name, with their defaults from options/
    (:func:`engine.scorer.api_settings`: ``crops_per_forward``, ``seed``, ``random_windows``, ``amp_dtype``,
    ``bn_stats``, ...). On CUDA, ``tf32`` as test.py's ``--tf32``/``--no_tf32``. A checkpoint that records other
    backbones than these is refused unless ``allow_other_backbones``. ``mapping``: a file ``test.py --fit_mapping``
    saved; scores then come in that list's MOS units (``metric.scorer.scale``; ``metric.lower_better`` for DMOS),
    refused when it was fitted for another model unless ``allow_other_mapping``.
    """
    scoring, models, weights = _import("engine.scorer"), _import("models"), _import("models.weights")
    scale = _import("data.score_mapping").load_mapping(mapping) if mapping is not None else None  # before downloads
    _import("utils.device").check_device(device)  # before anything is downloaded
    if n_ensemble is not None:
        settings["n_ensemble"] = n_ensemble
    if pretrained:
        folder = cache_dir or os.path.join(torch.hub.get_dir(), "ahiq")
        files = weights.weight_files()
        ckpt = ckpt or weights.fetch(files["ahiq_pipal"], folder)
        vit_weights = vit_weights or weights.fetch(files[models.VIT_TAGS[8]], folder)
        resnet_weights = resnet_weights or weights.fetch(files[models.RESNET_TAG], folder)
    source = models.BackboneSource(pretrained, vit_weights, resnet_weights)
    scorer = scoring.api_scorer(models.read_checkpoint(ckpt), source, device, mos_range=None,
                                allow_other_backbones=allow_other_backbones, tf32=tf32, mapping=scale,
                                allow_other_mapping=allow_other_mapping, **settings)
    return scoring.Metric(scorer, as_loss)
