"""torch.hub entry: ``torch.hub.load("<owner>/AHIQ" or a local checkout, "ahiq", ...)`` gives AHIQ as a metric in
pyiqa's calling convention (:class:`scoring.Metric`): ``metric(dis, ref)`` -> scores, higher is better.

    metric = torch.hub.load("path/to/AHIQ", "ahiq", source="local", device="cuda", n_ensemble=20)
    scores = metric("dis.png", "ref.png")
"""
from __future__ import annotations

import os

import torch

from models import RESNET_TAG, VIT_TAGS, build_model
from models.weights import fetch, weight_files
from scoring import Metric, Scorer, check_device, load_scorer

dependencies = ["torch", "torchvision", "timm", "numpy", "cv2", "PIL", "scipy", "safetensors"]


def ahiq(pretrained: bool = True, device: str = "cpu", n_ensemble: int = 20, as_loss: bool = False,
         cache_dir: str | None = None, **settings) -> Metric:
    """AHIQ trained on PIPAL (the released NTIRE 2022 checkpoint) on the pinned ViT-B/8 and ResNet-50 backbones.

    ``pretrained``: fetch the released checkpoint and the backbone weights (sha256 checked, as download.sh does)
    into ``cache_dir`` (default: ``torch.hub.get_dir()/ahiq``); offline, a one-line error says what to do.
    ``pretrained=False``: random backbones and head (tests). ``settings`` go to :class:`scoring.Scorer`
    (``crops_per_forward``, ``seed``, ``random_windows``, ``amp_dtype``, ...).
    """
    check_device(device)
    if not pretrained:
        scorer = Scorer(build_model(8, pretrained=False).to(device).eval(), n_ensemble=n_ensemble, **settings)
        return Metric(scorer, as_loss)
    folder = cache_dir or os.path.join(torch.hub.get_dir(), "ahiq")
    files = weight_files()
    ckpt = fetch(files["ahiq_pipal"], folder)
    vit, resnet = fetch(files[VIT_TAGS[8]], folder), fetch(files[RESNET_TAG], folder)
    scorer = load_scorer(ckpt, device=device, vit_weights=vit, resnet_weights=resnet, n_ensemble=n_ensemble,
                         **settings)
    return Metric(scorer, as_loss)
