"""Checkpoint interop: the official format (numpy float64 loss, numpy 1.x and 2 pickles), module. prefixes,
the project's own files, clear errors for files that do not fit, atomic saving, and which file test.py picks."""
from __future__ import annotations

import copy
import errno
import io
import os
import zipfile

import numpy as np
import pytest
import torch

import utils.files as files_mod
from tests.conftest import load_head
from utils.checkpoint import OFFICIAL_KEYS, find_checkpoint, load_checkpoint, save_weights
from utils.errors import AHIQError


def _perturbed_heads(model, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {part: {k: v + torch.randn(v.shape, generator=g) * 0.01 for k, v in sd.items()}
            for part, sd in model.trainable_state_dict().items()}


def _snapshot(model) -> dict:
    return {part: {k: v.clone() for k, v in sd.items()} for part, sd in model.trainable_state_dict().items()}


def _official_file(path, heads, model) -> None:
    """What the official train.py's save_model writes: head state dicts, optimizer, scheduler, epoch, np loss."""
    params = list(model.deform_net.parameters()) + list(model.regressor.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=50, eta_min=0)
    torch.save({"epoch": 33,
                "regressor_model_state_dict": heads["regressor"],
                "deform_net_model_state_dict": heads["deform_net"],
                "optimizer_state_dict": optimizer.state_dict(),
                "scheduler_state_dict": scheduler.state_dict(),
                "loss": np.mean([0.011, 0.013])}, path)


def _as_numpy1_pickle(src, dst) -> None:
    """Rewrite a torch zip file so its pickle names numpy 1.x's ``numpy.core.multiarray.scalar``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(item, data)


def _assert_heads(model, heads) -> None:
    for part, sd in heads.items():
        torch.testing.assert_close(getattr(model, part).state_dict(), sd, rtol=0, atol=0)


@pytest.mark.parametrize("numpy1", [False, True])
def test_official_format_with_numpy_loss_loads_safely(tmp_path, model_factory, numpy1):
    model = copy.deepcopy(model_factory(8))  # loading changes it: the session's cached model stays as it was
    heads = _perturbed_heads(model, 1)
    path = tmp_path / "epoch33.pth"
    _official_file(path, heads, model)
    if numpy1:
        _as_numpy1_pickle(path, tmp_path / "old.pth")
        path = tmp_path / "old.pth"
    ckpt = load_head(model, str(path))
    assert isinstance(ckpt["loss"], np.floating) and ckpt["loss"] == pytest.approx(0.012)
    assert ckpt["epoch"] == 33
    _assert_heads(model, heads)


def test_module_prefix_and_whole_model_state_dict(tmp_path, model_factory):
    model = copy.deepcopy(model_factory(8))
    heads = _perturbed_heads(model, 2)
    prefixed = {key: {"module." + k: v for k, v in heads[part].items()} for part, key in OFFICIAL_KEYS.items()}
    torch.save(prefixed, tmp_path / "ddp.pth")
    load_head(model, str(tmp_path / "ddp.pth"))
    _assert_heads(model, heads)
    heads = _perturbed_heads(model, 3)
    flat = {f"module.{part}.{k}": v for part, sd in heads.items() for k, v in sd.items()}
    flat["module.vit.pos_embed"] = torch.zeros(1)  # a whole-model dict: backbone entries are ignored
    torch.save({"params": flat}, tmp_path / "pyiqa_style.pth")
    load_head(model, str(tmp_path / "pyiqa_style.pth"))
    _assert_heads(model, heads)


def test_project_file_round_trip_keeps_official_keys(tmp_path, model_factory):
    model = copy.deepcopy(model_factory(16))
    path = tmp_path / "ours.pth"
    save_weights(str(path), model, meta={"mos_min": 900.0, "mos_max": 1800.0}, epoch=4)
    raw = torch.load(path, weights_only=True)
    assert set(OFFICIAL_KEYS.values()) <= set(raw) and raw["epoch"] == 4
    assert raw["ahiq"]["model"]["patch_size"] == 16 and raw["ahiq"]["mos_max"] == 1800.0
    # pyiqa's key: the same tensors under whole-model names, stored once (they share storage after loading)
    heads = {f"{part}.{k}" for part, key in OFFICIAL_KEYS.items() for k in raw[key]}
    assert set(raw["params"]) == heads
    w = raw["regressor_model_state_dict"]["conv.0.weight"]
    assert raw["params"]["regressor.conv.0.weight"].untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
    before = _snapshot(model)
    with torch.no_grad():
        for p in model.regressor.parameters():
            p.add_(1.0)
    load_head(model, str(path))
    _assert_heads(model, before)


def test_wrong_files_give_clear_errors(tmp_path, model_factory):
    model = copy.deepcopy(model_factory(8))
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(AHIQError, match=r"other\.pth: not an AHIQ checkpoint.*regressor_model_state_dict.*foo"):
        load_head(model, str(tmp_path / "other.pth"))
    heads = _perturbed_heads(model, 4)
    heads["regressor"]["extra.weight"] = torch.zeros(1)
    del heads["deform_net"]["conv_offset.bias"]
    torch.save({key: heads[part] for part, key in OFFICIAL_KEYS.items()}, tmp_path / "changed.pth")
    with pytest.raises(AHIQError, match=r"changed\.pth: deform_net does not fit.*missing.*conv_offset\.bias"):
        load_head(model, str(tmp_path / "changed.pth"))
    save_weights(str(tmp_path / "p16.pth"), model_factory(16))
    with pytest.raises(AHIQError, match=r"p16\.pth: trained with patch_size 16, but patch_size 8 was given"):
        load_head(model, str(tmp_path / "p16.pth"))
    (tmp_path / "torn.pth").write_bytes((tmp_path / "p16.pth").read_bytes()[:1000])
    with pytest.raises(AHIQError, match=r"torn\.pth: not a checkpoint AHIQ can read: cannot be read "
                                         r"\(.*torn or truncated"):
        load_checkpoint(str(tmp_path / "torn.pth"))
    with pytest.raises(AHIQError, match=r"absent\.pth: checkpoint not found.*download\.sh"):
        load_checkpoint(str(tmp_path / "absent.pth"))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_code_in_a_checkpoint_is_never_run(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"regressor_model_state_dict": _Payload()}, path)
    with pytest.raises(AHIQError, match=r"evil\.pth: not a checkpoint AHIQ can read: refused: it holds Python "
                                        r"objects that could run code "
                                        r"\(.*GLOBAL posix\.system.*\); AHIQ loads only tensors") as err:
        load_checkpoint(str(path))
    assert "truncated" not in str(err.value) and "\n" not in str(err.value)


def test_a_full_disk_during_a_save_keeps_the_previous_file(tmp_path, model_factory, monkeypatch):
    """A fault-injecting writer: the disk fills up in the middle of writing the checkpoint."""
    model = model_factory(8)
    path = tmp_path / "best.pth"
    save_weights(str(path), model, epoch=1)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class FullDisk(io.BufferedWriter):
        def write(self, data):
            super().write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files_mod.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, "wb", buffering=0)))
    with pytest.raises(AHIQError, match=r"best\.pth: cannot be written \(the disk is full\); nothing was replaced"):
        save_weights(str(path), model, epoch=2)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["best.pth"]  # no temporary file left behind


def test_find_checkpoint_rules(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(AHIQError, match="run folder not found"):
        find_checkpoint(str(run))
    run.mkdir()
    (run / "AHIQ_vit_p8_epoch33.pth").write_bytes(b"x")
    assert find_checkpoint(str(run)).endswith("AHIQ_vit_p8_epoch33.pth")
    for name in ("epoch_2.pth", "epoch_10.pth", "epoch3.pth"):
        (run / name).write_bytes(b"x")
    assert find_checkpoint(str(run)).endswith("epoch_10.pth")
    assert find_checkpoint(str(run), 3).endswith("epoch3.pth")
    with pytest.raises(AHIQError, match=r"load_epoch 7.*\[2, 3, 10\]"):
        find_checkpoint(str(run), 7)
    (run / "best.pth").write_bytes(b"x")
    assert find_checkpoint(str(run)).endswith("best.pth")
    assert find_checkpoint(str(run), 2).endswith("epoch_2.pth")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.pth", "b.pth"):
        (two / name).write_bytes(b"x")
    with pytest.raises(AHIQError, match=r"two: cannot choose a checkpoint among \['a\.pth', 'b\.pth'\].*--ckpt FILE"):
        find_checkpoint(str(two))


def test_saved_file_is_a_plain_torch_file(tmp_path, model_factory):
    """Our files load with a bare torch.load, as the official code and pyiqa do."""
    save_weights(str(tmp_path / "x.pth"), model_factory(8))
    raw = torch.load(io.BytesIO((tmp_path / "x.pth").read_bytes()), weights_only=True)
    assert raw["deform_net_model_state_dict"]["conv_offset.weight"].shape == (18, 3840, 3, 3)
