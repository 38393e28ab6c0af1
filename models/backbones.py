"""The two frozen feature extractors of AHIQ (Lao et al., CVPRW 2022, Sec. 3.1) and their weights.

Only the layers AHIQ reads are kept and run: ViT blocks 0-4 and the ResNet-50 stem + ``layer1``. Weights come
from timm under PINNED tags (the ones timm 0.5.4 loaded for the plain names the official code used), from local
timm state-dict files, or are random (``pretrained=False``, for tests and offline demos). Nothing ever falls back
to random weights silently.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import timm
import torch
import torch.nn as nn

import models.tiny  # noqa: F401 - registers the ahiq_tiny_* test backbones with timm
from models.weights import pinned
from utils.checkpoint import check_state_dict, load_checkpoint
from utils.errors import AHIQError
from utils.files import require_path

VIT_TAGS = {8: pinned("vit8"), 16: pinned("vit16")}  # the tags are written once, in models/weights.tsv
RESNET_TAG = pinned("resnet")
VIT_BLOCKS = (0, 1, 2, 3, 4)
CNN_BLOCKS = ("layer1.0", "layer1.1", "layer1.2")
VIT_CHANNELS = 768 * len(VIT_BLOCKS)
CNN_CHANNELS = 256 * 3


class ViTFeatures(nn.Module):
    """Outputs of the chosen ViT blocks (before the final norm, class token dropped), concatenated on channels in
    block order: (B, embed_dim * len(blocks), H/p, W/p). Blocks after the last chosen one are removed."""

    def __init__(self, vit: nn.Module, blocks: tuple[int, ...] = VIT_BLOCKS) -> None:
        super().__init__()
        if not blocks or min(blocks) < 0 or max(blocks) >= len(vit.blocks):
            raise AHIQError(f"vit_blocks {','.join(map(str, blocks))}: this ViT has blocks 0-{len(vit.blocks) - 1}")
        vit.prune_intermediate_layers(indices=list(blocks), prune_norm=True, prune_head=True)
        self.vit, self.blocks = vit, tuple(blocks)
        self.channels = vit.embed_dim * len(blocks)
        self.patch_size = vit.patch_embed.patch_size[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.vit.forward_intermediates(
            x, indices=list(self.blocks), norm=False, output_fmt="NCHW", intermediates_only=True)
        return torch.cat(feats, dim=1)


class ResNetFeatures(nn.Module):
    """Outputs of chosen blocks of one ResNet stage (after their final ReLU), concatenated on channels. The
    official choice, the three Bottlenecks of ``layer1``, gives (B, 768, H/4, W/4). Later stages are removed."""

    def __init__(self, resnet: nn.Module, blocks: tuple[str, ...] = CNN_BLOCKS) -> None:
        super().__init__()
        stages = {name.split(".")[0] for name in blocks}
        if not blocks or len(stages) != 1 or not all(_is_block(resnet, name) for name in blocks):
            raise AHIQError(f"cnn_blocks {','.join(blocks)}: give existing blocks of one stage, "
                            "e.g. layer1.0,layer1.1,layer1.2")
        self.stage = int(stages.pop()[len("layer"):])
        # Same attribute names as timm's ResNet, so timm state-dict keys load unchanged.
        self.conv1, self.bn1, self.act1, self.maxpool = resnet.conv1, resnet.bn1, resnet.act1, resnet.maxpool
        self.keep = {int(name.split(".")[1]) for name in blocks}
        for s in range(1, self.stage):
            setattr(self, f"layer{s}", getattr(resnet, f"layer{s}"))
        # The chosen stage ends at its last chosen block (slicing keeps the timm key names "0", "1", ...).
        last_stage = getattr(resnet, f"layer{self.stage}")[:max(self.keep) + 1]
        setattr(self, f"layer{self.stage}", last_stage)
        self.channels = sum(_out_channels(last_stage[i]) for i in sorted(self.keep))
        self.reduction = 2 ** (self.stage + 1)  # stem /4, then /2 per later stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for s in range(1, self.stage):
            x = getattr(self, f"layer{s}")(x)
        feats = []
        for i, block in enumerate(getattr(self, f"layer{self.stage}")):
            x = block(x)
            if i in self.keep:
                feats.append(x)
        return torch.cat(feats, dim=1)


def fold_batch_norms(cnn: nn.Module) -> int:
    """Each BatchNorm of a frozen ResNet folded into the convolution it follows (``convN``/``bnN`` of a block, a
    shortcut's (conv, norm)): the same function with running statistics, without a pass over each map. Only for
    scoring with running statistics (``--bn_stats batch`` needs the layers). Returns how many were folded."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    pairs = []
    for parent in cnn.modules():
        children = dict(parent.named_children())
        pairs += [(parent, f"conv{name[2:]}", name) for name, m in children.items()
                  if name.startswith("bn") and isinstance(m, nn.BatchNorm2d)
                  and isinstance(children.get(f"conv{name[2:]}"), nn.Conv2d)]
        if isinstance(parent, nn.Sequential) and len(parent) == 2 and isinstance(parent[0], nn.Conv2d) \
                and isinstance(parent[1], nn.BatchNorm2d):
            pairs.append((parent, "0", "1"))
    for parent, conv, bn in pairs:
        setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv).eval(), getattr(parent, bn).eval()))
        setattr(parent, bn, nn.Identity())
    return len(pairs)


def cast_products(net: nn.Module, dtype: torch.dtype) -> None:
    """The weights of a frozen backbone's convolutions and linear layers stored in ``dtype``: what autocast casts
    them to at every call (frozen weights are not in its cache), cast once. Norms and added parameters (position
    embeddings) stay fp32, as autocast runs them, so scores under autocast are unchanged."""
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.to(dtype)


def _is_block(resnet: nn.Module, name: str) -> bool:
    parts = name.split(".")
    if len(parts) != 2 or not parts[0].startswith("layer") or not parts[1].isdigit():
        return False
    stage = getattr(resnet, parts[0], None)
    return stage is not None and int(parts[1]) < len(stage)


def _out_channels(block: nn.Module) -> int:
    """Channels a residual block outputs: those of its last convolution outside the shortcut."""
    convs = [m for n, m in block.named_modules() if isinstance(m, nn.Conv2d) and not n.startswith("downsample")]
    return convs[-1].out_channels


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a timm state dict from a .safetensors or .pth file (unwrapping a ``state_dict``/``model`` entry)."""
    require_path(path, "backbone weights file", "run download.sh or pass an existing file")
    if not path.endswith(".safetensors"):
        sd = load_checkpoint(path)  # safe unpickling; files that are not checkpoints named for what they are
    else:
        try:
            from safetensors.torch import load_file
            sd = load_file(path, device="cpu")
        except Exception as err:  # any decoding failure becomes a one-line message naming the file
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise AHIQError(f"{path}: cannot read backbone weights ({type(err).__name__}: {first}); "
                            "expected a timm state dict in .pth or .safetensors format") from err
    for key in ("state_dict", "model"):  # both readers return a dict (load_checkpoint refuses anything else)
        if key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    return dict(sd)


def load_used_weights(module: nn.Module, path: str, tag: str) -> None:
    """Load the keys ``module`` uses from ``path``; extra keys (head, later blocks) are ignored, missing ones fail.
    ``module`` may be on the meta device (built without initialising): it gets the file's tensors themselves."""
    sd = read_state_dict(path)
    needed = module.state_dict()
    check_state_dict(sd, needed, path, None, f"{tag} (extra keys are ignored)",
                     f"pass the timm state dict of {tag}, downloaded or copied again", strict=False)
    module.load_state_dict({k: sd[k].float() if sd[k].is_floating_point() else sd[k] for k in needed}, strict=True,
                           assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:  # a tensor that is not in the state dict (a non-persistent buffer): never silently uninitialised
        raise AHIQError(f"{path}: {tag} has tensors no state dict holds ({left[:3]}); load it without a file")


def _create(tag: str, pretrained: bool, setting: str, **kwargs) -> nn.Module:
    arch, _, weights = tag.partition(".")
    known_arch = timm.is_model(arch)
    tags = timm.list_pretrained(arch + ".*") if known_arch and weights and pretrained else []  # only when it matters
    if not known_arch or (weights and pretrained and tag not in tags):
        known = ", ".join(t.partition(".")[2] for t in tags) or "none"
        has = f"weights tagged {weights!r} for {arch} (it has: {known})" if known_arch else f"model {arch!r}"
        raise AHIQError(f"{setting} {tag}: timm {timm.__version__} has no {has}; pass a timm name with its pinned tag, "
                        f"e.g. {VIT_TAGS[8] if setting == 'vit_name' else RESNET_TAG}")
    why = _unreachable(tag) if pretrained else None
    if why is None:
        try:
            return timm.create_model(tag, pretrained=pretrained, **kwargs)
        except (OSError, RuntimeError, ValueError) as err:
            why = f"the download failed ({type(err).__name__}: {str(err)[:120]})"
    raise AHIQError(f"the pretrained weights of {tag} are not on this machine and {why}; run `sh download.sh` on a "
                    "connected machine (it writes checkpoints/backbones/, found from there) or pass the files with "
                    "--vit_weights/--resnet_weights, or copy the timm/Hugging Face cache; --no_pretrained runs with "
                    "random backbones (meaningless scores)")


def _cached(tag: str) -> bool:
    """Whether the Hugging Face cache already holds the weights timm would download for ``tag``."""
    cfg = timm.models.get_pretrained_cfg(tag)
    if cfg is None or not cfg.hf_hub_id:
        return False
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(cfg.hf_hub_id.split("@")[0], name), str)
               for name in (cfg.hf_hub_filename or "model.safetensors", "pytorch_model.bin") if name)


def _unreachable(tag: str, host: str = "huggingface.co", timeout: float = 3.0) -> str | None:
    """Why timm cannot fetch ``tag`` (``HF_HUB_OFFLINE=1``, or the hub not reachable within ``timeout`` s), or None
    (it is in the local cache, or the hub answers): said at once, instead of the hub client's retries (tens of
    seconds, dozens of lines)."""
    if _cached(tag):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return None
    except OSError:
        return f"{host} cannot be reached"


def build_backbones(patch_size: int, pretrained: bool, vit_weights: str | None, resnet_weights: str | None,
                    vit_name: str | None, resnet_name: str | None, vit_blocks: tuple[int, ...],
                    cnn_blocks: tuple[str, ...], use_vit: bool, use_cnn: bool
                    ) -> tuple[ViTFeatures | None, ResNetFeatures | None]:
    """Build the frozen ViT and ResNet feature extractors of a checked :class:`models.ModelConfig`'s values (None
    for a branch that is not used; :func:`models.config.build_from_config` is the one caller).

    Names None: the pinned tags. A weights file wins over ``pretrained``; with neither, the backbones are random.
    A backbone whose weights come from a file is built on the meta device and then filled from the file: its random
    initialisation (seconds for a ViT-B on a CPU) is never computed.
    """
    vit_tag, resnet_tag = vit_name or VIT_TAGS[patch_size], resnet_name or RESNET_TAG
    vit = cnn = None
    if use_vit:
        # dynamic_img_size: any crop that is a multiple of the patch size (224 uses the position embedding as is).
        with torch.device("meta" if vit_weights else "cpu"):
            vit = ViTFeatures(_create(vit_tag, pretrained and vit_weights is None, "vit_name",
                                      dynamic_img_size=True), vit_blocks)
        if vit.patch_size != patch_size:
            raise AHIQError(f"vit_name {vit_tag} has patch size {vit.patch_size}; pass patch_size {vit.patch_size}")
        if vit_weights:
            load_used_weights(vit.vit, vit_weights, vit_tag)
    if use_cnn:
        with torch.device("meta" if resnet_weights else "cpu"):
            cnn = ResNetFeatures(_create(resnet_tag, pretrained and resnet_weights is None, "resnet_name"),
                                 cnn_blocks)
        if resnet_weights:
            load_used_weights(cnn, resnet_weights, resnet_tag)
    for net in (vit, cnn):
        if net is not None:
            net.requires_grad_(False)
            net.eval()
    return vit, cnn
