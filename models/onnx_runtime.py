"""AHIQ exported to ONNX (``python -m tools.export_onnx``), run by ONNX Runtime behind the interface the scoring loop
uses (:mod:`engine.loop`), so predict.py and the API score with it through the same windows, batches and tables.

The exported graph takes a batch of distorted crops and their reference crops, float32 RGB in [0, 1] of shape
(B, 3, S, S) (the normalisation is inside), and returns the (B,) scores. Its metadata (:data:`META_KEYS`) holds the
crop size S, the patch size, the model configuration, the training MOS range, the checkpoint's sha256 and where its
backbones came from. ONNX Runtime is an optional extra (requirements-onnx.txt): asked for and missing, one line.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.nn as nn

from models.ahiq import ReferenceFeatures
from utils.errors import AHIQError

META_KEYS = ("ahiq_format", "crop_size", "patch_size", "input", "model", "label_norm", "checkpoint",
             "checkpoint_sha256", "backbones", "exported_with")
FORMAT = "ahiq-onnx-1"
BACKENDS = ("torch", "onnxruntime")  # the model in PyTorch, or an export (tools/export_onnx.py) in ONNX Runtime


def onnxruntime():
    """The onnxruntime module, or one line saying how to get it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise AHIQError("ONNX Runtime is not installed: pip install -r requirements-onnx.txt (or drop --backend "
                        "onnxruntime / backend='onnxruntime')") from None
    return ort


def read_metadata(path: str, session=None) -> dict[str, Any]:
    """The AHIQ metadata of an exported file (JSON values decoded); a file without it is refused in one line."""
    if not os.path.isfile(path):
        raise AHIQError(f"{path}: ONNX file not found; export one with python -m tools.export_onnx --ckpt FILE --out "
                        f"{path}")
    ort = onnxruntime()
    try:
        session = session or ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as err:  # a damaged or foreign file: one line naming it
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise AHIQError(f"{path}: cannot be read as an ONNX model ({first})") from None
    raw = session.get_modelmeta().custom_metadata_map
    try:
        meta = {k: json.loads(v) for k, v in raw.items() if k in META_KEYS}
    except ValueError:
        meta = {}
    if meta.get("ahiq_format") != FORMAT:
        raise AHIQError(f"{path}: not an AHIQ export (no '{FORMAT}' metadata); export one with python -m "
                        "tools.export_onnx")
    return meta


class OnnxAHIQ(nn.Module):
    """An exported AHIQ in ONNX Runtime, with what :func:`engine.loop.score_batch` asks of a model: ``reference``
    gives the reference crops themselves (the graph computes their features with each distorted crop), and
    ``score_maps`` gives each crop's score as a 1x1 map (so the loop's pooling returns it; no patch maps)."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        super().__init__()
        ort = onnxruntime()
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise AHIQError(f"device {device!r}: this ONNX Runtime has no CUDA provider (pip install "
                                "onnxruntime-gpu), or use device='cpu'")
            index = torch.device(device).index or 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(path, providers=providers)
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise AHIQError(f"{path}: cannot be read as an ONNX model ({first})") from None
        self.meta = read_metadata(path, self.session)
        self.path, self.patch_size = path, int(self.meta["patch_size"])
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # where inputs are made: the CPU

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @staticmethod
    def pool(f: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        return f.mean(dim=(2, 3))

    def reference(self, ref: torch.Tensor) -> ReferenceFeatures:
        return ReferenceFeatures(ref, None)

    def score_maps(self, dis: torch.Tensor, ref: ReferenceFeatures) -> tuple[torch.Tensor, None]:
        feed = {"dis": dis.detach().float().cpu().numpy(), "ref": ref.projected.detach().float().cpu().numpy()}
        scores = torch.from_numpy(self.session.run(["score"], feed)[0])
        return scores.view(-1, 1, 1, 1), None
