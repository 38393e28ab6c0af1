"""The one scoring loop, shared by test.py, validation and the scoring API.

A batch holds B images with K ensemble crops each, as uint8. The B*K crop pairs go through the model in chunks of
at most ``crops_per_forward`` pairs, and each image's score is the mean over its K crops (as in the official test).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from models import AHIQ


@torch.inference_mode()
def score_crops(model: AHIQ, dis: torch.Tensor, ref: torch.Tensor, crops_per_forward: int = 50) -> torch.Tensor:
    """(B,) scores of (B, K, 3, S, S) uint8 (or [0,1] float) crop stacks, averaged over the K crops."""
    b, k = dis.shape[:2]
    device = next(model.deform_net.parameters()).device
    dis, ref = dis.flatten(0, 1), ref.flatten(0, 1)
    scores = []
    for start in range(0, b * k, crops_per_forward):
        d = dis[start:start + crops_per_forward].to(device, non_blocking=True)
        r = ref[start:start + crops_per_forward].to(device, non_blocking=True)
        if d.dtype == torch.uint8:
            d, r = d.float() / 255, r.float() / 255
        scores.append(model(d, r).float().flatten())
    return torch.cat(scores).view(b, k).mean(dim=1)


def predict(model: AHIQ, loader: DataLoader, crops_per_forward: int = 50,
            progress: bool = True, desc: str = "scoring") -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, predictions and labels (NaN where the list has none) of every image the loader yields, in order."""
    was_training = model.training
    model.eval()
    names, preds, labels = [], [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, dynamic_ncols=True):
        preds.append(score_crops(model, batch["dis"], batch["ref"], crops_per_forward).cpu())
        names.extend(batch["name"])
        labels.append(batch["label"].double())
    model.train(was_training)
    return names, torch.cat(preds).double().numpy(), torch.cat(labels).numpy()
