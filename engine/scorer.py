"""Score image pairs from Python: the same model, crop ensemble and scoring loop as test.py.

    from engine.scorer import load_scorer
    scorer = load_scorer()                         # checkpoints/ahiq_pipal (download.sh), CPU, 20-crop ensemble
    scores = scorer.score_files([("dis.png", "ref.png")])
    scores = scorer.score_tensors(dis, ref)        # (B, 3, H, W) floats in [0, 1] -> (B,)
    maps = scorer.score_maps([("dis.png", "ref.png")])  # per pair: score, f, w, contribution maps (utils/quality_maps)

    metric = torch.hub.load("path/to/AHIQ", "ahiq", source="local")   # or Metric(scorer): pyiqa's convention
    scores = metric("dis.png", "ref.png")          # paths, PIL images, HxWx3 uint8 arrays or tensors

Scores: higher is better (``Metric.lower_better`` is False). They are on the scale the model was trained on, the
training MOS min-max normalised to [0, 1]; ``load_scorer(mapping="scale.json")`` (test.py --fit_mapping) returns
them in the MOS units of the list the mapping was fitted on (``scorer.scale`` says which); ``scorer.to_mos`` maps them
back to the training labels' units with the range stored in the checkpoint (or given); ``labels_are_dmos`` says those
units are DMOS (lower is better).

Windows (data/windows.py): with more than 9 crops per image they are random, drawn from the seed and a digest of the
reference's 8-bit pixels; so a pair gets the same windows, and the same score, as a path, a PIL image, an array or a
tensor, in any batch and at any position (``random_windows="official"`` alone, test.py's replay of the released
code, draws them by list position). The settings and their defaults are test.py's options (options/).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from data.label_norm import LabelNorm
from data.pair_dataset import PairDataset
from data.score_mapping import Mapping as ScoreMapping
from data.score_mapping import load_mapping
from data.windows import WindowPolicy
from engine.loop import Predictions, predict, score_crops
from models import AHIQ, BackboneSource, Checkpoint, build_checkpoint_model, read_checkpoint
from models.config import check_crop, weights_digest
from models.onnx_runtime import BACKENDS, OnnxAHIQ
from options.base_options import check_value
from options.data_options import window_policy
from options.defaults import CHECKPOINTS, RELEASED_NAME, check_home
from options.test_options import scoring_defaults, scoring_options
from utils.checkpoint import choose_checkpoint, meta_of
from utils.device import AMP_DTYPES, check_device, configure_cuda
from utils.errors import AHIQError
from utils.quality_maps import ImageMaps, image_maps
from utils.records import file_digest


@dataclass
class Scorer:
    """A model ready to score, with the :class:`data.windows.WindowPolicy` that decides each image's crops. Made by
    :func:`build_scorer` (test.py, predict.py, protocol.py, :func:`load_scorer`, the hub) from checked settings."""

    model: AHIQ
    policy: WindowPolicy
    crops_per_forward: int  # crop pairs per model forward: memory, never the result
    bn_stats: str = "running"  # ResNet BatchNorm: running statistics, or each call's as the released test.py ("batch")
    label_norm: LabelNorm | None = None  # how the training labels were normalised
    checkpoint: str | None = None
    amp_dtype: torch.dtype | None = None  # bf16/fp16 autocast on CUDA
    mapping: ScoreMapping | None = None  # score_files/score_tensors/Metric give scores on this MOS scale (--mapping)

    @property
    def crop_size(self) -> int:
        return self.policy.crop

    @property
    def warning(self) -> str | None:
        """What every table and figure of these scores must say, or None."""
        return ("RANDOM BACKBONES (--no_pretrained): these scores mean nothing about image quality"
                if self.model.random_backbones else None)

    def marked(self, title: str) -> str:
        """A figure's ``title`` with :attr:`warning` in front of it, when there is one."""
        return f"{self.warning}. {title}" if self.warning else title

    @property
    def scale(self) -> str:
        """What the numbers :meth:`score_files` and :meth:`score_tensors` return mean (a saved mapping's units, else
        the training scale)."""
        return self.mapping.units if self.mapping else "the training MOS min-max normalised to [0, 1], higher is better"

    @property
    def lower_better(self) -> bool:
        """The returned numbers fall as quality rises: only on a DMOS mapping's scale."""
        return bool(self.mapping and self.mapping.norm.lower_better)

    def on_scale(self, scores: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Model scores on :attr:`scale` (unchanged without a mapping); a tensor stays a float32 tensor."""
        if self.mapping is None:
            return scores
        if isinstance(scores, torch.Tensor):
            return torch.from_numpy(self.mapping(scores.detach().cpu().numpy())).float()
        return self.mapping(scores)

    @property
    def labels_are_dmos(self) -> bool:
        """The training labels were DMOS (LIVE, CSIQ): :meth:`to_mos` gives DMOS, where lower is better. Scores
        themselves are always higher-is-better."""
        return bool(self.label_norm and self.label_norm.lower_better)

    def to_mos(self, scores: np.ndarray | torch.Tensor) -> np.ndarray:
        """Normalised scores in the units of the training labels: lo + score * (hi - lo), or for DMOS labels
        hi - score * (hi - lo)."""
        if self.label_norm is None:
            raise AHIQError(f"{self.checkpoint}: the checkpoint holds no training MOS range (official files do not); "
                            "give one with --mos_range LO HI / mos_range=(lo, hi)")
        return self.label_norm.invert(scores)

    def use_mapping(self, mapping: ScoreMapping | None, allow_other: bool = False) -> str | None:
        """Scores on ``mapping``'s scale from now on, once it is known to be fitted for this model (refused
        otherwise unless ``allow_other``); returns a note to show when the file cannot tell."""
        note = mapping.check_model(self.weights(), allow_other) if mapping is not None else None
        self.mapping = mapping
        return note

    def weights(self) -> dict[str, str]:
        """Digests of the weights that decide the scores: the head's and each backbone's (an export: its file's)."""
        if isinstance(self.model, AHIQ):
            head = weights_digest(nn.ModuleDict(self.model.trainable_parts()))
            return {"head": head, **{part: r["digest"] for part, r in self.model.backbones.items()}}
        return {"onnx": file_digest(self.model.path)[:16]}

    def score_dataset(self, dataset: PairDataset, batch_size: int, num_workers: int = 0, progress: bool = True,
                      indices: list[int] | None = None, keep_maps: bool = False, stop=None,
                      on_batch=None) -> Predictions:
        """Predictions for the images ``indices`` of ``dataset`` (default: all; test.py's loop:
        :func:`engine.predict`); ``keep_maps``: with their crops' patch maps (see :meth:`dataset_maps`); ``stop``
        and ``on_batch`` as :func:`engine.loop.predict`'s (a scoring job: engine/jobs.py)."""
        return predict(self.model, dataset, indices, batch_size, num_workers, self.crops_per_forward, self.amp_dtype,
                       progress=progress, bn_stats=self.bn_stats, keep_maps=keep_maps, stop=stop, on_batch=on_batch)

    def dataset_maps(self, dataset: PairDataset, indices: list[int], batch_size: int, num_workers: int = 0,
                     progress: bool = False) -> list[ImageMaps]:
        """The maps of images ``indices`` of ``dataset`` on their own pixel grids (as scored: after --resize or
        --flip), from the forward that scores them (ResNet BatchNorm with running statistics)."""
        if not isinstance(self.model, AHIQ):
            raise AHIQError(f"{self.checkpoint}: patch maps need the PyTorch model (an export returns scores only); "
                            "use --backend torch with the checkpoint")
        scorer = replace(self, bn_stats="running")  # per-call statistics depend on the batch
        out = scorer.score_dataset(dataset, batch_size, num_workers, progress, indices, keep_maps=True)
        return [image_maps(out.maps[i].scores.item(), out.maps[i].f, out.maps[i].w, dataset.windows(i),
                           self.crop_size, dataset.sizes[i]) for i in indices]

    def file_pairs(self, pairs: Sequence[tuple[str, str]]) -> PairDataset:
        """(distorted, reference) file paths as the dataset the scoring loop reads (named by the distorted file)."""
        pairs = list(pairs)
        bad = [p for p in pairs if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(map(_is_path, p)))]
        if bad or not pairs:
            raise AHIQError(f"expected a non-empty list of (distorted, reference) file path pairs, got "
                            f"{bad[0] if bad else pairs}")
        pairs = [(os.fspath(d), os.fspath(r)) for d, r in pairs]
        return PairDataset([(os.path.basename(d), d, r) for d, r in pairs], None, self.policy)

    def score_files(self, pairs: Sequence[tuple[str, str]], batch_size: int = 1, num_workers: int = 0,
                    progress: bool = False) -> np.ndarray:
        """Scores of (distorted, reference) file pairs, in order. Windows as :class:`data.windows.WindowPolicy`
        draws them: a pair scores the same here, in test.py and as arrays or tensors; distorted images that share
        a reference file share its features (computed once). On :attr:`scale` (a ``mapping``'s units when given)."""
        return self.on_scale(self.score_dataset(self.file_pairs(pairs), batch_size, num_workers, progress).preds)

    def score_maps(self, pairs: Sequence[tuple[str, str]], batch_size: int = 1, num_workers: int = 0,
                   progress: bool = False, images: bool = False) -> list[ImageMaps]:
        """Per (distorted, reference) file pair, its score and patch maps on the image's pixel grid
        (:class:`utils.quality_maps.ImageMaps`), from the windows and forward :meth:`score_files` uses;
        ``images``: with the two images as scored (``ImageMaps.images``, HxWx3 uint8)."""
        dataset = self.file_pairs(pairs)
        maps = self.dataset_maps(dataset, list(range(len(dataset))), batch_size, num_workers, progress)
        if images:
            for i, m in enumerate(maps):
                m.images = tuple(dataset.load(path) for path in dataset.paths(i))
        return maps

    def score_tensors(self, dis: torch.Tensor, ref: torch.Tensor, return_maps: bool = False
                      ) -> torch.Tensor | tuple[torch.Tensor, list[ImageMaps]]:
        """Scores (B,) of (B, 3, H, W) image tensors in [0, 1], each pair on its windows (random ones keyed by its
        reference's pixels, as for files: neither its position nor the rest of the batch matters).
        ``return_maps``: also each image's maps (:class:`utils.quality_maps.ImageMaps`, on the model's scale). Scores
        on :attr:`scale`."""
        check_pair(dis, ref)
        dis_crops, ref_crops, windows = self.crop_pairs(dis, ref)
        bn_stats = "running" if return_maps else self.bn_stats
        out = score_crops(self.model, torch.stack(dis_crops), torch.stack(ref_crops), self.crops_per_forward,
                          self.amp_dtype, bn_stats, keep_maps=return_maps)  # one size per call: K crops each
        if not return_maps:
            return self.on_scale(out.scores)
        bounds = np.cumsum([0, *map(len, windows)])
        maps = [image_maps(out.scores[i].item(), out.f[lo:hi], None if out.w is None else out.w[lo:hi], windows[i],
                           self.crop_size, tuple(dis.shape[-2:])) for i, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]
        return self.on_scale(out.scores), maps

    def crop_pairs(self, dis: torch.Tensor, ref: torch.Tensor, policy: WindowPolicy | None = None
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[list[tuple[int, int]]]]:
        """Per pair of (B, 3, H, W) tensors (:func:`check_pair`), its (K, 3, S, S) distorted and reference crops and
        its windows (:meth:`data.windows.WindowPolicy.crops` of ``policy``, default the scorer's). Crops keep the
        tensors' autograd graph."""
        crops = [(policy or self.policy).crops(d, r) for d, r in zip(dis, ref)]
        return [c[0] for c in crops], [c[1] for c in crops], [c[2] for c in crops]


def check_pair(dis: object, ref: object) -> None:
    """Two batches of :func:`check_unit_images` of the same shape."""
    check_unit_images(ref.detach() if isinstance(ref, torch.Tensor) else ref, "ref")
    check_unit_images(dis.detach() if isinstance(dis, torch.Tensor) else dis, "dis", like=ref.shape)


def check_unit_images(x: object, name: str, like: torch.Size | None = None) -> None:
    """The documented input of :meth:`Scorer.score_tensors`: a non-empty (B, 3, H, W) float tensor in [0, 1] (``like``:
    of that shape, the reference's); anything else is one line that says what it got (type, dtype, shape, range)."""
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 3 and x.numel() and x.is_floating_point() \
            and like in (None, x.shape):
        lo, hi = x.min().item(), x.max().item()  # NaN in x makes them NaN, which is outside [0, 1]
        if 0 <= lo and hi <= 1:
            return
        got = f"values in [{lo:g}, {hi:g}]" + (" (NaN or infinite values)" if not torch.isfinite(x).all() else "")
    else:
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
    shape = f", shaped as ref {tuple(like)}," if like is not None else ""
    raise AHIQError(f"{name}: expected a (B, 3, H, W) batch (B >= 1){shape} of floats in [0, 1], got {got}: "
                    "divide uint8 RGB by 255 (not ImageNet-normalised or [-1, 1]); numpy arrays: "
                    "torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255")


def mos_range_norm(mos_range: Sequence[float]) -> LabelNorm:
    """The training MOS range a user gives (--mos_range LO HI, ``mos_range=(lo, hi)``): finite, LO below HI."""
    try:
        lo, hi = (float(v) for v in mos_range)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise AHIQError(f"--mos_range / mos_range {mos_range!r}: give two finite numbers LO < HI, the lowest and "
                        "highest MOS of the training labels (higher is better)")
    return LabelNorm(lo, hi)


def training_norm(mos_range: Sequence[float] | None, meta: Mapping[str, Any], path: str | None) -> LabelNorm | None:
    """The training labels' range: the one the user gives (official files hold none; MOS, higher is better), else
    the one ``meta`` (a checkpoint's or an export's metadata) records, else None."""
    if mos_range is not None:
        return mos_range_norm(mos_range)
    return LabelNorm.from_meta(meta, path)


def build_scorer(checkpoint: Checkpoint, source: BackboneSource, policy: WindowPolicy, device: str = "cpu",
                 deform_impl: str = "gemm", mos_range: tuple[float, float] | None = None, crops_per_forward: int = 1,
                 bn_stats: str = "running", amp_dtype: torch.dtype | None = None,
                 allow_other_backbones: bool = False, compile_model: bool = False) -> Scorer:
    """The one assembly from a checkpoint to a ready :class:`Scorer` (test.py, predict.py, protocol.py,
    :func:`load_scorer` and the hub entry all come here). Random weights (backbones without files, a head without
    a checkpoint) are drawn from ``policy.seed`` as train.py draws them from --seed, so two runs score alike."""
    check_crop(policy.crop, checkpoint.config.patch_size)
    model = build_checkpoint_model(checkpoint, source, deform_impl, policy.seed, allow_other_backbones)
    norm = training_norm(mos_range, meta_of(checkpoint.state or {}), checkpoint.path)
    model = model.to(device).for_scoring(bn_stats, amp_dtype, "inductor" if compile_model else None)
    return Scorer(model, policy, crops_per_forward, bn_stats, norm, checkpoint.path, amp_dtype)


def onnx_scorer(path: str, device: str = "cpu", mos_range: tuple[float, float] | None = None,
                **settings: Any) -> Scorer:
    """A :class:`Scorer` of an exported model (``python -m tools.export_onnx``) run by ONNX Runtime: the same
    windows, batches and reference sharing as PyTorch's; the crop size and the training MOS range come from the
    file's metadata. Patch maps and per-call BatchNorm need the PyTorch model."""
    s = api_settings(**settings)
    torch_only = [f"{k} {v}" for k, v in (("bn_stats", s["bn_stats"]), ("compile_model", s["compile_model"]))
                  if v != scoring_defaults()[k]]
    if torch_only:
        raise AHIQError(f"{path}: {', '.join(torch_only)} needs the PyTorch model (the export has the running "
                        "statistics and its own graph); drop it or use backend torch")
    model = OnnxAHIQ(path, device)
    crop = int(model.meta["crop_size"])
    if s["crop_size"] not in (None, crop):
        raise AHIQError(f"{path}: exported at crop size {crop}; crop_size {s['crop_size']} needs another export "
                        f"(python -m tools.export_onnx --crop_size {s['crop_size']})")
    norm = training_norm(mos_range, {"label_norm": model.meta.get("label_norm")}, path)
    return Scorer(model, window_policy(s, crop), s["crops_per_forward"], "running", norm, path)


def load_scorer(ckpt: str | None = None, checkpoints_dir: str = CHECKPOINTS, name: str = RELEASED_NAME,
                device: str = "cpu", pretrained: bool = True, vit_weights: str | None = None,
                resnet_weights: str | None = None, deform_impl: str = "gemm",
                mos_range: tuple[float, float] | None = None, model: dict | None = None, load_epoch: int = -1,
                tf32: bool = True, allow_other_backbones: bool = False, backend: str = "torch",
                mapping: str | None = None, allow_other_mapping: bool = False, **settings: Any) -> Scorer:
    """A :class:`Scorer` for a checkpoint (default: the one test.py would pick in ``checkpoints_dir/name``).

    The architecture and the trained crop size come from the checkpoint; ``model`` may give
    :class:`models.ModelConfig` fields, which must agree with it (official files: the paper's model, e.g.
    ``model={"patch_size": 16}``). Backbone weights: the files given, else those download.sh put in
    ``checkpoints_dir/backbones``, else the hub; a checkpoint that records other backbones is refused unless
    ``allow_other_backbones``. On CUDA, ``tf32`` as test.py's ``--tf32``/``--no_tf32`` (:func:`configure_cuda`).
    ``settings``: test.py's scoring options by name, defaults as there (:func:`api_settings`): ``n_ensemble``,
    ``seed``, ``random_windows``, ``windows``, ``batch_size``, ``resize``/``size``, ``max_pixels``, ``crop_size``,
    ``crops_per_forward``, ``bn_stats``, and ``amp_dtype`` (a torch dtype, CUDA only). ``backend="onnxruntime"``:
    ``ckpt`` is an exported ``.onnx`` file (:func:`onnx_scorer`). ``mapping``: a file ``test.py --fit_mapping`` saved;
    the scorer then returns scores in that list's MOS units (:attr:`Scorer.scale`; the maps stay on the model's); a
    mapping fitted for another model is refused unless ``allow_other_mapping``.
    """
    scale = load_mapping(mapping) if mapping is not None else None  # before anything slow
    api_settings(**settings)  # a misspelt setting or a device this machine lacks is named before any file is read
    check_device(device)
    if backend not in BACKENDS or (backend == "onnxruntime" and ckpt is None):
        raise AHIQError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)} (onnxruntime with "
                        "ckpt='model.onnx' from python -m tools.export_onnx)")
    if backend == "onnxruntime":
        return mapped(onnx_scorer(ckpt, device, mos_range, **settings), scale, allow_other_mapping)
    check_home()
    path = choose_checkpoint(ckpt, os.path.join(checkpoints_dir, name), load_epoch)
    source = BackboneSource(pretrained, vit_weights, resnet_weights, checkpoints_dir)
    return api_scorer(read_checkpoint(path, model), source, device, deform_impl, mos_range, allow_other_backbones,
                      tf32, scale, allow_other_mapping, **settings)


def mapped(scorer: Scorer, mapping: ScoreMapping | None, allow_other: bool) -> Scorer:
    """``scorer`` giving scores on ``mapping``'s scale (:meth:`Scorer.use_mapping`); a note is warned."""
    note = scorer.use_mapping(mapping, allow_other)
    if note:
        warnings.warn(note, stacklevel=3)
    return scorer


API_NAMES = {"no_pretrained": "pretrained=False", "gpu_ids": "device='cuda:0'", "no_tf32": "tf32=False",
             "amp": "amp_dtype=torch.bfloat16"}  # test.py options that load_scorer and the hub take otherwise


def api_settings(**given: Any) -> dict[str, Any]:
    """The scoring settings of the API and the hub: test.py's option defaults (options/), replaced by ``given``, each
    checked as its option is (:func:`options.base_options.check_value`); a name test.py does not know is refused."""
    known = scoring_options()
    unknown = sorted(set(given) - set(known) - {"amp_dtype"})
    if unknown:
        api = {k: v for k, v in API_NAMES.items() if k in unknown}  # command-line names the API spells otherwise
        raise AHIQError(f"unknown scoring setting(s) {', '.join(unknown)}"
                        + (f" (in Python: {', '.join(api.values())})" if api else "")
                        + f"; known: {', '.join(sorted({*known, 'amp_dtype'}))}")
    for name, value in given.items():
        if name == "amp_dtype" and value not in (None, *AMP_DTYPES.values()):
            raise AHIQError(f"amp_dtype={value!r}: expected None, torch.bfloat16 or torch.float16")
        if name != "amp_dtype" and not (name == "crop_size" and value is None):  # None: the checkpoint's
            check_value(*known[name], value, f"{name}={value!r}")
    return {**scoring_defaults(), "amp_dtype": None, "crop_size": None, **given}


def api_scorer(checkpoint: Checkpoint, source: BackboneSource, device: str, deform_impl: str = "gemm",
               mos_range: tuple[float, float] | None = None, allow_other_backbones: bool = False, tf32: bool = True,
               mapping: ScoreMapping | None = None, allow_other_mapping: bool = False, **settings: Any) -> Scorer:
    """The scorer of :func:`load_scorer` and the hub, one assembly for both: settings by option name
    (:func:`api_settings`), the CUDA settings (``tf32``: :func:`configure_cuda`), :func:`build_scorer`, and scores
    on a loaded ``mapping``'s scale (:func:`mapped`). ``device``: checked by the caller (:func:`check_device`)."""
    s = api_settings(**settings)
    configure_cuda(device, tf32)
    policy = window_policy(s, s["crop_size"] or checkpoint.config.crop_size)
    scorer = build_scorer(checkpoint, source, policy, device, deform_impl, mos_range, s["crops_per_forward"],
                          s["bn_stats"], s["amp_dtype"], allow_other_backbones, s["compile_model"])
    return mapped(scorer, mapping, allow_other_mapping)


ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def to_batch(x: ImageLike | Sequence[ImageLike], name: str) -> torch.Tensor:
    """PIL images, HxWx3 uint8 arrays or (3, H, W) / (B, 3, H, W) float tensors in [0, 1] (or lists of them) as one
    (B, 3, H, W) float batch in [0, 1], converted as test.py converts files (uint8 RGB / 255)."""
    items = list(x) if isinstance(x, (list, tuple)) else [x]
    batch = []
    for item in items:
        if isinstance(item, Image.Image):
            item = np.asarray(item.convert("RGB"))
        if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3:
            item = torch.tensor(item).permute(2, 0, 1).float().div_(255)  # one copy (the array may be read-only)
        if not isinstance(item, torch.Tensor):
            got = f"{item.dtype} array of shape {item.shape}" if isinstance(item, np.ndarray) else type(item).__name__
            raise AHIQError(f"{name}: expected file paths, PIL images, HxWx3 uint8 RGB arrays or tensors, got {got}")
        batch.append(item if item.dim() == 4 else item.unsqueeze(0))
    if len({tuple(b.shape[1:]) for b in batch}) != 1:
        raise AHIQError(f"{name}: give one or more images of one size per call (got {len(batch)} images of sizes "
                        f"{sorted({tuple(b.shape[-2:]) for b in batch})}); score other sizes in separate calls")
    out = torch.cat(batch)
    check_unit_images(out, name)
    return out


def _is_path(x: object) -> bool:
    return isinstance(x, (str, os.PathLike))


class Metric(nn.Module):
    """AHIQ in pyiqa's calling convention: ``metric(dis, ref)`` -> (B,) scores, higher is better.

    ``dis`` and ``ref``: file paths (or lists of them; scored exactly as test.py scores them), PIL images, HxWx3
    uint8 RGB arrays, or (B, 3, H, W) tensors in [0, 1]. ``as_loss=True``: a differentiable function of ``dis``
    (fixed windows, at most 9; no inference mode, no uint8 round trip), still the score (higher is better), as
    pyiqa's ``as_loss``; to minimise, use :meth:`loss` (``1 - score``, averaged). ``return_maps=True``: (scores,
    list of :class:`utils.quality_maps.ImageMaps`), each image's patch score, weight and contribution maps.
    """

    def __init__(self, scorer: Scorer, as_loss: bool = False) -> None:
        super().__init__()
        self.scorer, self.as_loss = scorer, as_loss
        self.net = scorer.model
        if as_loss and (scorer.mapping is not None or not isinstance(self.net, AHIQ)):
            raise AHIQError("as_loss=True differentiates the PyTorch model's own scores: load the scorer from a "
                            "checkpoint (an ONNX export has no gradients), without mapping")
        if as_loss:
            self.net.requires_grad_(False)  # gradients flow to the images, never into the metric

    @property
    def labels_are_dmos(self) -> bool:
        return self.scorer.labels_are_dmos

    @property
    def lower_better(self) -> bool:
        """False: higher scores mean better quality, whatever the training labels were; True only on a DMOS
        ``mapping``'s scale (:attr:`Scorer.lower_better`)."""
        return self.scorer.lower_better

    def forward(self, dis, ref, return_maps: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[ImageMaps]]:
        paths = _is_path(dis) or (isinstance(dis, (list, tuple)) and dis and all(map(_is_path, dis)))
        if self.as_loss and (return_maps or paths):
            raise AHIQError("as_loss=True scores tensors, differentiably (no files, no return_maps); use a Metric "
                            "without as_loss for those")
        if paths:
            dis, ref = ([dis], [ref]) if _is_path(dis) else (list(dis), list(ref))
            if len(dis) != len(ref) or not all(map(_is_path, ref)):
                raise AHIQError("give as many reference paths as distorted paths")
            pairs = list(zip(dis, ref))
            if return_maps:
                maps = self.scorer.score_maps(pairs)
                return self.scorer.on_scale(torch.tensor([m.score for m in maps], dtype=torch.float32)), maps
            return torch.from_numpy(np.asarray(self.scorer.score_files(pairs))).float()
        if self.as_loss:
            return self.differentiable(dis, ref)
        return self.scorer.score_tensors(to_batch(dis, "dis"), to_batch(ref, "ref"), return_maps)

    def loss(self, dis: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """A perceptual loss to minimise (``as_loss=True``): ``1 - score`` averaged over the batch, so that an
        optimiser that lowers it raises the quality AHIQ sees in ``dis`` (scores are higher-is-better)."""
        if not self.as_loss:
            raise AHIQError("Metric.loss needs as_loss=True (a differentiable score)")
        return (1 - self.differentiable(dis, ref)).mean()

    def differentiable(self, dis: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Scores (B,) that backpropagate to ``dis``: the mean over each pair's fixed windows (the policy's, at most
        9, or the grid)."""
        check_pair(dis, ref)
        policy = self.scorer.policy
        if policy.layout == "ensemble" and policy.n > 9:
            policy = replace(policy, n=9)
        d, r = (torch.stack(c) for c in self.scorer.crop_pairs(dis, ref, policy)[:2])
        device = self.net.device
        self.net.eval()
        with torch.no_grad():
            features = self.net.reference(r.flatten(0, 1).to(device))
        return self.net.score(d.flatten(0, 1).to(device), features).view(d.shape[:2]).mean(dim=1)
