"""Operations of one training step: the leaf ATen operations (no views) that the profiler records for a step of the
tiny AHIQ (batch 4, crop 32) on the CPU, a proxy for the GPU kernels a step launches (the count does not depend on
the backbones' width). ``--fused``: the optimizer as train.py builds it on CUDA (fused Adam); without it, the
multi-tensor loop it runs on the CPU.

    python -m benchmarks.op_count [--fused]
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from models import BackboneSource, ModelConfig
from models.config import build_from_config
from models.tiny import TINY_RESNET, TINY_VIT

VIEWS = {"view", "reshape", "as_strided", "permute", "transpose", "t", "expand", "unsqueeze", "squeeze", "select",
         "slice", "split", "unflatten", "flatten", "alias", "detach", "empty", "empty_strided", "resize_",
         "_reshape_alias", "unbind", "chunk", "narrow", "lift_fresh", "is_nonzero", "result_type", "_unsafe_view",
         "view_as", "expand_as", "split_with_sizes", "set_", "movedim", "contiguous", "clone", "empty_like", "item",
         "_local_scalar_dense", "size", "stride", "numel", "dim", "is_same_size"}  # no kernel of their own


def count(fused: bool) -> int:
    torch.manual_seed(0)
    config = ModelConfig(8, vit_name=TINY_VIT[8], resnet_name=TINY_RESNET, head_width=16)
    model = build_from_config(config, BackboneSource(pretrained=False), seed=1).train()
    params = [p for part in model.trainable_parts().values() for p in part.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5, **({"fused": True} if fused else {}))
    dis, ref, label = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), torch.rand(4)

    def step() -> None:
        loss = torch.nn.functional.mse_loss(model(dis, ref).view(-1), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # the optimizer's state made
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.name[6:] not in VIEWS
               and not any(c.name.startswith("aten::") for c in e.cpu_children))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fused", action="store_true")
    print(count(p.parse_args().fused))
