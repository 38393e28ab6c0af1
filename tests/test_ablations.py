"""Ablation switches: every combination builds, trains a step and scores; checkpoints record their switches and
refuse to load into a different model; train.py and test.py take the switches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import predict
import test as test_script
import train
from engine.loop import score_crops
from models import build_model
from models.tiny import TINY_RESNET, TINY_VIT
from tests.conftest import load_head, train_args
from utils.checkpoint import save_weights
from utils.errors import AHIQError

TINY = {"vit_name": TINY_VIT[8], "resnet_name": TINY_RESNET, "head_width": 16}  # the switches on a tiny AHIQ
COMBOS = [
    {"fusion": "conv"},
    {"fusion": "none"},
    {"branches": "vit"},
    {"branches": "cnn", "fusion": "conv"},
    {"branches": "cnn", "fusion": "none", "pooling": "mean"},
    {"pooling": "mean"},
    {"vit_blocks": (0, 2)},
    {"cnn_blocks": ("layer1.0", "layer1.2")},
    {"cnn_blocks": ("layer2.0", "layer2.1"), "fusion": "conv"},
    {"vit_name": "vit_small_patch8_224.dino", "resnet_name": "resnet18", "cnn_blocks": ("layer1.0", "layer1.1")},
]


@pytest.mark.parametrize("arch", COMBOS, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
def test_every_switch_builds_trains_and_scores(arch, tmp_path):
    arch = {**TINY, **arch}
    torch.manual_seed(0)
    model = build_model(8, pretrained=False, **arch)
    params = [p for part in model.trainable_parts().values() for p in part.parameters()]
    assert params and all(p.requires_grad for p in params)
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    dis, ref = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    model.train()
    loss = (model(dis, ref).view(-1) - torch.tensor([0.2, 0.8])).pow(2).mean()
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, params))
    scores = score_crops(model, dis[:, None], ref[:, None]).scores
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    path = tmp_path / "ablation.pth"
    save_weights(str(path), model)
    raw = torch.load(path, weights_only=True)
    assert {"deform_net_model_state_dict", "regressor_model_state_dict"} <= set(raw)  # always both official keys
    torch.manual_seed(0)  # the same random backbones; the head comes from the file
    twin = build_model(8, pretrained=False, **arch)
    load_head(twin, str(path))
    torch.testing.assert_close(score_crops(twin, dis[:, None], ref[:, None]).scores, scores)


def test_derived_channels_and_block_choice():
    small = build_model(8, pretrained=False, vit_name="vit_small_patch8_224.dino", resnet_name="resnet18",
                        vit_blocks=(1, 3), cnn_blocks=("layer1.0", "layer1.1"))
    assert small.vit.channels == 384 * 2 and small.cnn.channels == 64 * 2
    assert small.regressor.down_channel.in_channels == 384 * 2 + 64 * 2
    with pytest.raises(AHIQError, match="existing blocks of one stage"):
        build_model(8, pretrained=False, resnet_name="resnet18")  # its layer1 has two blocks
    assert len(small.vit.vit.blocks) == 4  # blocks after the last chosen one are not kept
    stage2 = build_model(8, pretrained=False, cnn_blocks=("layer2.0", "layer2.1"), fusion="conv", **TINY)
    assert len(stage2.cnn.layer2) == 2 and not hasattr(stage2.cnn, "layer3") and stage2.cnn.reduction == 8
    with pytest.raises(AHIQError, match="blocks 0-5"):
        build_model(8, pretrained=False, vit_blocks=(0, 6), **TINY)
    with pytest.raises(AHIQError, match="one stage"):
        build_model(8, pretrained=False, cnn_blocks=("layer1.0", "layer2.0"), **TINY)
    with pytest.raises(AHIQError, match="offsets come from the ViT"):
        build_model(8, pretrained=False, branches="cnn", **TINY)
    with pytest.raises(AHIQError, match="vit_blocks 4,0: give increasing block indices"):
        build_model(8, pretrained=False, vit_blocks=(4, 0))  # concatenated in block order: refused, not reordered
    with pytest.raises(AHIQError, match="vit_blocks 1,1: give increasing"):
        build_model(8, pretrained=False, vit_blocks=(1, 1))


def test_checkpoint_refuses_a_model_with_other_switches(tmp_path):
    path = tmp_path / "mean.pth"
    save_weights(str(path), build_model(8, pretrained=False, pooling="mean"))
    with pytest.raises(AHIQError, match=r"mean\.pth: trained with pooling mean, but pooling weighted was given"):
        load_head(build_model(8, pretrained=False), str(path))


def test_an_ablation_is_scored_without_its_switches(train_sets, tmp_path):
    """The checkpoint carries the architecture: test.py and predict.py score an ablation with no switches, equal to
    the scores with them; a switch that contradicts the checkpoint stops in one line naming both values."""
    switches = ["--fusion", "conv", "--pooling", "mean", "--vit_blocks", "1,3"]
    train.main(train_args(train_sets, tmp_path, "ablation", "--n_epoch", "1", *switches))
    ckpt = str(tmp_path / "ablation" / "best.pth")
    saved = torch.load(ckpt, weights_only=True)["ahiq"]["model"]
    assert (saved["fusion"], saved["pooling"], saved["vit_blocks"], saved["crop_size"]) == ("conv", "mean", [1, 3], 32)
    weights = ["--no_pretrained"]  # the tiny backbones' names come from the checkpoint
    common = ["--test_ref_path", train_sets["val"]["ref"], "--test_dis_path", train_sets["val"]["dis"],
              "--test_list", train_sets["val"]["list"], "--ckpt", ckpt, "--n_ensemble", "1",
              "--gpu_ids", "-1", "--num_workers", "0", "--checkpoints_dir", str(tmp_path), *weights]
    with_switches = test_script.main(common + switches + ["--test_file_name", "with.txt"])
    without = test_script.main(common + ["--test_file_name", "without.txt"])  # crop size 32 from the file too
    assert np.isfinite(with_switches["srcc"])
    assert Path(with_switches["predictions"]).read_text() == Path(without["predictions"]).read_text()
    pair = [str(Path(train_sets["val"]["dis"]) / "A0000_00_01.bmp"), str(Path(train_sets["val"]["ref"]) / "A0000.bmp")]
    scored = predict.main(["--dis", pair[0], "--ref", pair[1], "--ckpt", ckpt, "--n_ensemble", "1", "--gpu_ids",
                           "-1", "--num_workers", "0", *weights])
    line = Path(without["predictions"]).read_text().splitlines()[1]
    assert line.startswith("A0000_00_01.bmp,") and scored[0] == pytest.approx(float(line.split(",")[1]), rel=1e-6)
    with pytest.raises(AHIQError, match=r"best\.pth: trained with pooling mean, but pooling weighted was given"):
        test_script.main(common + ["--pooling", "weighted"])
    with pytest.raises(AHIQError, match=r"trained with vit_blocks 1,3, but vit_blocks 0,1,2,3,4 was given"):
        predict.main(["--dis", pair[0], "--ref", pair[1], "--ckpt", ckpt, "--gpu_ids", "-1",
                      "--vit_blocks", "0,1,2,3,4", *weights])
