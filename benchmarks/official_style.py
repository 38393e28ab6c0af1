"""An independent, obviously-correct AHIQ forward written the way the official code computes it.

Full timm backbones (all blocks, head included), features taken with forward hooks, the distorted and the
reference image run one after the other, the deformable fusion applied to each separately, and the head written
with functional ops straight from the official state dicts. The tests compare the fast model against this, and
benchmarks/benchmark.py times it as the baseline.
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models.resnet import Bottleneck
from timm.models.vision_transformer import Block
from torchvision.ops import deform_conv2d

from models import RESNET_TAG, VIT_TAGS


class OfficialStyleBackbones:
    """Full timm ViT and ResNet-50 with forward hooks on every Block and Bottleneck, as the official code has."""

    def __init__(self, patch: int, vit_file: str, resnet_file: str) -> None:
        self.patch = patch
        with torch.device("meta"):  # every tensor comes from the files (strict loads): no random initialisation
            self.vit = timm.create_model(VIT_TAGS[patch], pretrained=False, dynamic_img_size=True).eval()
            self.resnet = timm.create_model(RESNET_TAG, pretrained=False).eval()
        self.vit.load_state_dict(load_file(vit_file), assign=True)
        self.resnet.load_state_dict(torch.load(resnet_file, weights_only=True), assign=True)
        self.outputs: list[torch.Tensor] = []
        for net, kind in ((self.vit, Block), (self.resnet, Bottleneck)):
            for layer in net.modules():
                if isinstance(layer, kind):
                    layer.register_forward_hook(lambda _m, _i, out: self.outputs.append(out))

    def vit_feature(self, x: torch.Tensor) -> torch.Tensor:
        self.outputs.clear()
        self.vit(x)
        feat = torch.cat([self.outputs[i][:, 1:, :] for i in range(5)], dim=2)
        b, n, c = feat.shape
        h = w = x.shape[-1] // self.patch
        assert h * w == n
        return feat.transpose(1, 2).reshape(b, c, h, w)

    def resnet_feature(self, x: torch.Tensor) -> torch.Tensor:
        self.outputs.clear()
        self.resnet(x)
        return torch.cat(self.outputs[:3], dim=1)


def _deform_fusion(sd: dict, cnn: torch.Tensor, vit_ref: torch.Tensor, patch: int) -> torch.Tensor:
    vit_ref = F.interpolate(vit_ref, size=cnn.shape[-2:], mode="nearest")
    offset = F.conv2d(vit_ref, sd["conv_offset.weight"], sd["conv_offset.bias"], padding=1)
    x = deform_conv2d(cnn, offset, sd["deform.weight"], sd["deform.bias"], padding=(1, 1))
    x = F.relu(F.conv2d(x, sd["conv1.0.weight"], sd["conv1.0.bias"], stride=2, padding=1))
    return F.conv2d(x, sd["conv1.2.weight"], sd["conv1.2.bias"], stride=1 if patch == 8 else 2, padding=1)


def _regress(sd: dict, vit_dis, vit_ref, cnn_dis, cnn_ref) -> torch.Tensor:
    f_dis = F.conv2d(torch.cat((vit_dis, cnn_dis), 1), sd["down_channel.weight"], sd["down_channel.bias"])
    f_ref = F.conv2d(torch.cat((vit_ref, cnn_ref), 1), sd["down_channel.weight"], sd["down_channel.bias"])
    x = torch.cat((f_dis - f_ref, f_dis, f_ref), 1)
    x = F.relu(F.conv2d(x, sd["feat_smoothing.0.weight"], sd["feat_smoothing.0.bias"], padding=1))
    x = F.conv2d(x, sd["feat_smoothing.2.weight"], sd["feat_smoothing.2.bias"], padding=1)
    x = F.relu(F.conv2d(x, sd["conv1.0.weight"], sd["conv1.0.bias"], padding=1))
    f = F.conv2d(x, sd["conv.0.weight"], sd["conv.0.bias"])
    w = torch.sigmoid(F.conv2d(x, sd["conv_attent.0.weight"], sd["conv_attent.0.bias"]))
    return (f * w).sum(dim=2).sum(dim=2) / w.sum(dim=2).sum(dim=2)


def official_forward(backbones: OfficialStyleBackbones, deform_sd: dict, regressor_sd: dict,
                     dis: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(B, 1) scores of [0, 1] crops, computed as the official code does (autograd flows wherever it can)."""
    d, r = (dis - 0.5) / 0.5, (ref - 0.5) / 0.5
    vit_dis, vit_ref = backbones.vit_feature(d), backbones.vit_feature(r)
    cnn_dis = _deform_fusion(deform_sd, backbones.resnet_feature(d), vit_ref, backbones.patch)
    cnn_ref = _deform_fusion(deform_sd, backbones.resnet_feature(r), vit_ref, backbones.patch)
    return _regress(regressor_sd, vit_dis, vit_ref, cnn_dis, cnn_ref)


@torch.no_grad()
def reference_scores(backbones: OfficialStyleBackbones, deform_sd: dict, regressor_sd: dict,
                     dis: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(B, 1) scores of [0, 1] crops, as the official test loop computes them for one crop index."""
    return official_forward(backbones, deform_sd, regressor_sd, dis, ref)


def official_five_point_window(idx: int, h: int, w: int, crop: int) -> tuple[int, int]:
    """(top, left) of the official five/nine-point crop ``idx``, transcribed case by case."""
    center_h, center_w = h // 2, w // 2
    cases = {0: (0, 0), 1: (0, w - crop), 2: (h - crop, 0), 3: (h - crop, w - crop),
             4: (center_h - crop // 2, center_w - crop // 2), 5: (center_h - crop // 2, 0),
             6: (center_h - crop // 2, w - crop), 7: (0, center_w - crop // 2), 8: (h - crop, center_w - crop // 2)}
    return cases[idx]
