"""AHIQ exported to ONNX (:func:`export`; ``python -m tools.export_onnx``) and run by ONNX Runtime behind the
interface the scoring loop uses (:mod:`engine.loop`), so predict.py and the API score with it through the same
windows, batches and tables.

The exported graph takes a batch of distorted crops and their reference crops, float32 RGB in [0, 1] of shape
(B, 3, S, S) (the normalisation is inside), and returns the (B,) scores. Its metadata (:data:`META_KEYS`) holds the
crop size S, the patch size, the model configuration, the training MOS range, the checkpoint's sha256 and where its
backbones came from. ONNX Runtime is an optional extra (requirements-onnx.txt): asked for and missing, one line.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from models.ahiq import ReferenceFeatures, any_random
from utils.errors import AHIQError
from utils.files import require_path

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


def open_session(path: str, providers: list | None = None):
    """An ONNX Runtime session of the exported file ``path``; a missing, damaged or foreign file is one line."""
    require_path(path, "ONNX file", f"export one with python -m tools.export_onnx --ckpt FILE --out {path}")
    ort = onnxruntime()
    try:
        return ort.InferenceSession(path, providers=providers or ["CPUExecutionProvider"])
    except Exception as err:  # a damaged or foreign file: one line naming it
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise AHIQError(f"{path}: cannot be read as an ONNX model ({first})") from None


def read_metadata(path: str, session=None) -> dict[str, Any]:
    """The AHIQ metadata of an exported file (JSON values decoded); a file without it is refused in one line."""
    raw = (session or open_session(path)).get_modelmeta().custom_metadata_map
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
        self.session = open_session(path, providers)
        self.meta = read_metadata(path, self.session)
        self.path, self.patch_size = path, int(self.meta["patch_size"])
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # where inputs are made: the CPU

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def random_backbones(self) -> bool:
        return any_random(self.meta.get("backbones") or {})

    @staticmethod
    def pool(f: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        return f.mean(dim=(2, 3))

    def reference(self, ref: torch.Tensor) -> ReferenceFeatures:
        return ReferenceFeatures(ref, None)

    def score_maps(self, dis: torch.Tensor, ref: ReferenceFeatures) -> tuple[torch.Tensor, None]:
        feed = {"dis": dis.detach().float().cpu().numpy(), "ref": ref.projected.detach().float().cpu().numpy()}
        scores = torch.from_numpy(self.session.run(["score"], feed)[0])
        return scores.view(-1, 1, 1, 1), None


class _Scores(nn.Module):
    """The exported function: (dis, ref) crops -> (B,) scores."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, dis: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.model(dis, ref).view(-1)


@contextlib.contextmanager
def fixed_position_embedding(model: nn.Module, example: tuple[torch.Tensor, torch.Tensor]) -> Iterator[None]:
    """timm resamples a ViT's position embedding to the input's grid on every call (bicubic with antialiasing, which
    ONNX has no operator for). Within this block the resampling returns, call by call, the tensors an eager forward
    of ``example`` computed, so the graph holds exactly PyTorch's values for this crop size."""
    import timm.models.vision_transformer as vision_transformer

    original = vision_transformer.resample_abs_pos_embed
    seen: list[torch.Tensor] = []

    def record(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out.detach().clone())
        return out

    vision_transformer.resample_abs_pos_embed = record
    try:
        with torch.no_grad():
            model(*example)
        replayed = iter(seen)
        vision_transformer.resample_abs_pos_embed = lambda *args, **kwargs: next(replayed)
        yield
    finally:
        vision_transformer.resample_abs_pos_embed = original


def export(model: nn.Module, out: str, crop: int, meta: dict, opset: int = 17, tolerance: float = 1e-5,
           check_batch: int = 2) -> dict:
    """Write ``model`` (an AHIQ on the CPU, gemm deformable convolution) as ONNX to ``out`` with ``meta``, after
    ONNX Runtime has scored ``check_batch`` random crop pairs (and one alone) within ``tolerance`` of PyTorch;
    returns the measured differences. Nothing is left at ``out`` when the check fails."""
    import onnx

    ort = onnxruntime()
    model = model.eval()
    wrapper = _Scores(model).eval()
    g = torch.Generator().manual_seed(0)
    example = tuple(torch.rand(2, 3, crop, crop, generator=g) for _ in range(2))
    tmp = f"{out}.part.{os.getpid()}"
    try:
        with fixed_position_embedding(model, example), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks that hold for every batch size
            torch.onnx.export(wrapper, example, tmp, input_names=["dis", "ref"], output_names=["score"],
                              dynamic_axes={"dis": {0: "batch"}, "ref": {0: "batch"}, "score": {0: "batch"}},
                              opset_version=opset, dynamo=False)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        measured = {}
        for b in (check_batch, 1):
            dis, ref = (torch.rand(b, 3, crop, crop, generator=g) for _ in range(2))
            with torch.no_grad():
                expected = wrapper(dis, ref).numpy()
            got = session.run(["score"], {"dis": dis.numpy(), "ref": ref.numpy()})[0]
            measured[f"batch_{b}"] = float(np.max(np.abs(got - expected)) / max(float(np.max(np.abs(expected))),
                                                                                  1e-12))
        worst = max(measured.values())
        if not worst <= tolerance:
            raise AHIQError(f"{out}: ONNX Runtime's scores differ from PyTorch's by {worst:.2e} relative (more than "
                            f"--tolerance {tolerance:g}); nothing was written")
        proto = onnx.load(tmp)
        for key, value in {"ahiq_format": FORMAT, **meta}.items():
            proto.metadata_props.add(key=key, value=json.dumps(value))
        onnx.save(proto, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"max_rel_diff": measured, "bytes": os.path.getsize(out)}
