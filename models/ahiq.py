"""AHIQ: attention-based hybrid full-reference IQA (Lao et al., "Attentions Help CNNs See Better", CVPRW 2022).

One ``nn.Module`` with ``forward(dis, ref)`` on [0, 1] RGB crops -> (B, 1) scores. Its trainable parts carry the
official parameter names (``deform_net.*``, ``regressor.*``) so checkpoints move both ways between this project,
the official code and pyiqa. ``forward(dis, ref)`` is ``score(dis, reference(ref))``: everything that depends on
the reference alone (its backbone features, the deformable offsets they predict, its fused and down-projected map)
is :class:`ReferenceFeatures`, computed once and reusable for every distorted image of that reference and window.

Ablation switches (defaults = the paper's model; all in :class:`models.config.ModelConfig`): ``fusion`` deform /
conv (a plain 3x3 conv) / none; ``branches`` hybrid / vit (ViT features only) / cnn (fused CNN features only);
``pooling`` weighted (sum(f*w)/sum(w)) / mean. Which backbone blocks feed the model is chosen in
:mod:`models.backbones`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from torchvision.ops import DeformConv2d

from models.backbones import CNN_CHANNELS, VIT_CHANNELS, cast_products, fold_batch_norms
from models.deform import conv3x3_nearest_upsampled, deform_conv2d_gemm
from utils.errors import AHIQError

DEFORM_IMPLS = ("gemm", "torchvision")
BN_STATS = ("running", "batch")  # ResNet BatchNorm when scoring: running statistics, or each call's (released test.py)


def any_random(backbones: dict) -> bool:
    """Whether a record of backbones (:attr:`AHIQ.backbones`, a checkpoint's or an export's) holds random weights
    (--no_pretrained): scores of such a model mean nothing, and every table and figure says so."""
    return any(r.get("source") == "random" for r in backbones.values())


def check_maps(bn_stats: str, keep_maps: bool) -> None:
    """Patch maps come from the forward with running BatchNorm statistics: per-call statistics (``bn_stats``
    batch) depend on the rest of the batch, so a crop's maps would too."""
    if keep_maps and bn_stats == "batch":
        raise AHIQError("patch maps are computed with bn_stats running only (per-call statistics depend on the "
                        "batch); drop bn_stats batch")


FUSIONS = ("deform", "conv", "none")
BRANCHES = ("hybrid", "vit", "cnn")
POOLINGS = ("weighted", "mean")


class DeformFusion(nn.Module):
    """Sec. 3.2: ViT features of the reference predict offsets for a deformable conv on the CNN features, then
    ``conv1`` brings the CNN map (H / ``cnn_reduction``) to the ViT grid (H / ``patch_size``)."""

    def __init__(self, patch_size: int = 8, in_channels: int = VIT_CHANNELS, cnn_channels: int = CNN_CHANNELS,
                 hidden: int = 512, impl: str = "gemm", fusion: str = "deform", cnn_reduction: int = 4) -> None:
        super().__init__()
        factor = patch_size // cnn_reduction
        if factor < 1 or factor & (factor - 1) or patch_size % cnn_reduction:
            raise ValueError(f"CNN features at 1/{cnn_reduction} cannot be brought to the 1/{patch_size} ViT grid")
        self.impl, self.fusion = impl, fusion
        if fusion == "deform":
            self.conv_offset = nn.Conv2d(in_channels, 2 * 3 * 3, 3, 1, 1)
            self.deform = DeformConv2d(cnn_channels, cnn_channels, 3, 1, 1)
        elif fusion == "conv":
            self.conv = nn.Conv2d(cnn_channels, cnn_channels, 3, 1, 1)
        first = 2 if factor >= 2 else 1  # official: stride 2 then 1 (patch 8) or 2 (patch 16)
        self.conv1 = nn.Sequential(
            nn.Conv2d(cnn_channels, hidden, 3, stride=first, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, cnn_channels, 3, stride=factor // first, padding=1),
        )

    def offsets(self, vit_ref: torch.Tensor | None, cnn_size: tuple[int, int]) -> torch.Tensor | None:
        """The deformable offsets predicted from the reference's ViT features (None without deformable fusion).

        Official: conv_offset(nearest-resize of vit_ref to the CNN map size); the CNN map is always an integer
        multiple of the ViT grid (crops are multiples of the patch), so the resized map is never built.
        """
        if self.fusion != "deform":
            return None
        return conv3x3_nearest_upsampled(vit_ref, self.conv_offset.weight, self.conv_offset.bias,
                                         cnn_size[0] // vit_ref.shape[-2])

    def fuse(self, cnn_feat: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
        """The fused CNN map on the ViT grid; ``offset`` holds one row per row of ``cnn_feat``."""
        if self.fusion == "deform":
            if self.impl == "gemm":  # same result as torchvision's kernel (tested), faster, and autocast-friendly
                cnn_feat = deform_conv2d_gemm(cnn_feat, offset, self.deform.weight, self.deform.bias, padding=1)
            else:
                cnn_feat = self.deform(cnn_feat, offset)
        elif self.fusion == "conv":
            cnn_feat = self.conv(cnn_feat)
        return self.conv1(cnn_feat)


class PixelPrediction(nn.Module):
    """Sec. 3.3: patch-wise scores ``f`` and weights ``w``; the image score is sum(f * w) / sum(w)."""

    def __init__(self, in_channels: int = VIT_CHANNELS + CNN_CHANNELS, width: int = 256,
                 pooling: str = "weighted") -> None:
        """``width``: 256 in the paper (down_channel 256, feat_smoothing 1024 and 512, conv1 256: w, 4w, 2w, w)."""
        super().__init__()
        self.pooling = pooling
        self.down_channel = nn.Conv2d(in_channels, width, kernel_size=1)
        self.feat_smoothing = nn.Sequential(
            nn.Conv2d(3 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4 * width, 2 * width, 3, padding=1),
        )
        self.conv1 = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU())
        if pooling == "weighted":
            self.conv_attent = nn.Sequential(nn.Conv2d(width, 1, kernel_size=1), nn.Sigmoid())
        self.conv = nn.Sequential(nn.Conv2d(width, 1, kernel_size=1))

    def maps(self, f_dis: torch.Tensor, f_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch scores ``f`` and weights ``w`` (B, 1, h, w) from the down-projected features (``down_channel``
        outputs) of distorted and reference; ``w`` is None with ``mean`` pooling (every patch counts alike)."""
        feat = self.conv1(self.feat_smoothing(torch.cat((f_dis - f_ref, f_dis, f_ref), dim=1)))
        return self.conv(feat), self.conv_attent(feat) if self.pooling == "weighted" else None

    @staticmethod
    def pool(f: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """Scores (B, 1): sum(f * w) / sum(w) over the patches, or their mean without weights."""
        if w is None:
            return f.mean(dim=(2, 3))
        return (f * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3))

    def forward(self, f_dis: torch.Tensor, f_ref: torch.Tensor) -> torch.Tensor:
        """Scores (B, 1) from the down-projected features of distorted and reference."""
        return self.pool(*self.maps(f_dis, f_ref))


@dataclass
class ReferenceFeatures:
    """Everything the model derives from reference crops alone, one row per crop: its down-projected features and
    the deformable offsets its ViT features predict. Computed once per (reference, window) and reused for every
    distorted image scored against it (:mod:`engine`)."""

    projected: torch.Tensor
    offset: torch.Tensor | None

    def __getitem__(self, rows) -> ReferenceFeatures:
        return ReferenceFeatures(self.projected[rows], None if self.offset is None else self.offset[rows])

    @staticmethod
    def cat(parts: list[ReferenceFeatures]) -> ReferenceFeatures:
        offsets = [p.offset for p in parts]
        return ReferenceFeatures(torch.cat([p.projected for p in parts]),
                                 None if offsets[0] is None else torch.cat(offsets))


class AHIQ(nn.Module):
    """The full model. ``vit`` and ``cnn`` are the frozen extractors of :mod:`models.backbones` (one may be None
    for a single-branch ablation); ``config`` (a :class:`models.config.ModelConfig`) is the architecture they were
    built from, saved with every checkpoint."""

    def __init__(self, vit: nn.Module | None, cnn: nn.Module | None, config, deform_impl: str = "gemm") -> None:
        super().__init__()
        self.config, self.patch_size, self.branches = config, config.patch_size, config.branches
        self.vit, self.cnn = vit, cnn
        self.deform_net = None
        channels = vit.channels if config.branches != "cnn" else 0
        if config.branches != "vit":
            self.deform_net = DeformFusion(config.patch_size, vit.channels if vit is not None else 0, cnn.channels,
                                           hidden=2 * config.head_width, impl=deform_impl, fusion=config.fusion,
                                           cnn_reduction=cnn.reduction)
            channels += cnn.channels
        self.regressor = PixelPrediction(channels, config.head_width, pooling=config.pooling)
        self.backbones: dict[str, dict] = {}  # where each backbone's weights came from (models/config.py)

    @property
    def device(self) -> torch.device:
        return next(self.regressor.parameters()).device

    @property
    def random_backbones(self) -> bool:
        return any_random(self.backbones)

    @property
    def pool(self):
        """How patch maps become a score (the head's pooling)."""
        return self.regressor.pool

    def train(self, mode: bool = True) -> AHIQ:
        """Only the head trains; the backbones stay in eval mode (their BatchNorm statistics are fixed)."""
        super().train(mode)
        for net in (self.vit, self.cnn):
            if net is not None:
                net.eval()
        return self

    @contextlib.contextmanager
    def batch_statistics(self) -> Iterator[None]:
        """Within the block, the ResNet's BatchNorm layers normalise with the statistics of each call, as in the
        released test.py (which never calls ``.eval()``); their running statistics are neither used nor changed."""
        layers = [m for m in (self.cnn.modules() if self.cnn is not None else [])
                  if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        before = [(m.training, m.track_running_stats) for m in layers]
        for m in layers:
            m.training, m.track_running_stats = True, False
        try:
            yield
        finally:
            for m, (training, track) in zip(layers, before):
                m.training, m.track_running_stats = training, track

    def for_scoring(self, bn_stats: str = "running", amp_dtype: torch.dtype | None = None,
                    compile_backend: str | None = None) -> AHIQ:
        """This model, in eval mode, made faster to score (in place; not for training again): the frozen ResNet's
        BatchNorms folded into their convolutions when running statistics are used (maps use them too), and the
        frozen backbones' convolutions and linear layers stored in ``amp_dtype``, the casts autocast would make at
        every call made once. Scores are unchanged (tests/test_model.py). ``compile_backend`` (e.g. "inductor"):
        ``torch.compile`` of the frozen ViT's forward (in place: the same parameters and state-dict keys) and of the
        fusion (the deformable convolution's sampling fused with its casts, instead of samples written in
        fp32 and read back); the first calls of each crop count compile; the scores are judged against the AMP
        bounds on a GPU (benchmarks/gpu_check.py)."""
        self.eval()
        if bn_stats == "running" and self.cnn is not None:
            fold_batch_norms(self.cnn)
        if amp_dtype is not None:
            for net in filter(None, (self.vit, self.cnn)):
                cast_products(net, amp_dtype)
        if compile_backend is not None:
            if self.vit is not None:
                self.vit.compile(backend=compile_backend)
            if self.deform_net is not None:
                self.deform_net.fuse = torch.compile(self.deform_net.fuse, backend=compile_backend)
        return self

    def trainable_parts(self) -> dict[str, nn.Module]:
        return {name: m for name, m in (("deform_net", self.deform_net), ("regressor", self.regressor))
                if m is not None}

    def trainable_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: m.state_dict() for name, m in self.trainable_parts().items()}

    def _check(self, x: torch.Tensor, like: torch.Size | None = None) -> None:
        """``x``: square crops (B, 3, S, S), S a multiple of the patch size (``like``: of this shape, the
        reference's)."""
        if x.dim() != 4 or x.shape[-1] != x.shape[-2] or x.shape[-1] % self.patch_size or like not in (None, x.shape):
            shaped = f", shaped as the reference crops {tuple(like)}" if like is not None else ""
            raise ValueError(f"expected square crops (B, 3, S, S) with S divisible by {self.patch_size}{shaped}, got "
                             f"{tuple(x.shape)}")

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The frozen backbones' features of crops in [0, 1] (the official normalisation, for both backbones).

        The backbones' parameters never require gradients, so no graph is recorded through them in training; one is
        only when the input itself requires gradients (AHIQ as a perceptual loss, :class:`engine.scorer.Metric`).
        """
        self._check(x)
        x = (x - 0.5) / 0.5
        return self.vit(x) if self.vit is not None else None, self.cnn(x) if self.cnn is not None else None

    def _project(self, vit: torch.Tensor | None, cnn: torch.Tensor | None, offset: torch.Tensor | None) -> torch.Tensor:
        feats = [vit] if self.branches != "cnn" else []
        if self.branches != "vit":
            feats.append(self.deform_net.fuse(cnn, offset))
        return self.regressor.down_channel(torch.cat(feats, dim=1))

    def reference(self, ref: torch.Tensor) -> ReferenceFeatures:
        """What the model needs of reference crops (B, 3, S, S) in [0, 1], to score distorted crops against them."""
        vit, cnn = self._features(ref)
        offset = self.deform_net.offsets(vit, cnn.shape[-2:]) if self.deform_net is not None else None
        return ReferenceFeatures(self._project(vit, cnn, offset), offset)

    def score(self, dis: torch.Tensor, ref: ReferenceFeatures) -> torch.Tensor:
        """Scores (B, 1) of distorted crops (B, 3, S, S) against the features of their references (one row each)."""
        return self.regressor.pool(*self.score_maps(dis, ref))

    def score_maps(self, dis: torch.Tensor, ref: ReferenceFeatures) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The patch scores ``f`` and weights ``w`` (B, 1, S/p, S/p) that :meth:`score` pools (``w`` None with mean
        pooling): one patch per ViT token, p = ``patch_size`` pixels a side."""
        vit, cnn = self._features(dis)
        return self.regressor.maps(self._project(vit, cnn, ref.offset), ref.projected)

    def forward(self, dis: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Scores (B, 1) for distorted/reference crops (B, 3, S, S) in [0, 1]; S a multiple of the patch size."""
        self._check(dis, ref.shape)
        return self.score(dis, self.reference(ref))
