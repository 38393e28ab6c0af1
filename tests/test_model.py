"""The fast batched model against the official-style computation, frozen backbones, and backbone weight files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models.backbones as backbones_mod
from benchmarks.official_style import OfficialStyleBackbones, reference_scores
from engine.loop import ChunkSize, score_crops
from models import VIT_TAGS, build_model
from utils.errors import AHIQError


@pytest.mark.parametrize("patch,crops", [(8, (32, 48)), (16, (32, 64))])
def test_fast_forward_equals_official_style_forward(model_factory, backbone_files, patch, crops):
    model = model_factory(patch)
    ref_backbones = OfficialStyleBackbones(patch, backbone_files[patch], backbone_files["resnet"])
    g = torch.Generator().manual_seed(patch)
    for crop in crops:
        dis, ref = torch.rand(3, 3, crop, crop, generator=g), torch.rand(3, 3, crop, crop, generator=g)
        with torch.no_grad():
            fast = model(dis, ref)
        slow = reference_scores(ref_backbones, model.deform_net.state_dict(), model.regressor.state_dict(), dis, ref)
        assert fast.shape == (3, 1)
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-7)
        assert fast.std() > 0  # distinct inputs give distinct scores: the comparison is not vacuous


def test_torchvision_deform_path_equals_the_default(model_factory):
    model = model_factory(8)
    dis, ref = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        gemm = model(dis, ref)
        model.deform_net.impl = "torchvision"
        try:
            tv = model(dis, ref)
        finally:
            model.deform_net.impl = "gemm"
    torch.testing.assert_close(gemm, tv, rtol=1e-5, atol=1e-7)


def test_only_used_layers_are_kept(model_factory):
    model = model_factory(8)
    assert len(model.vit.vit.blocks) == 5
    names = {n for n, _ in model.cnn.named_children()}
    assert names == {"conv1", "bn1", "act1", "maxpool", "layer1"}


def test_backbones_frozen_and_no_gradients(model_factory):
    model = model_factory(8)
    model.train()
    assert not model.vit.training and not model.cnn.training and model.regressor.training
    assert all(not p.requires_grad for p in list(model.vit.parameters()) + list(model.cnn.parameters()))
    dis, ref = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    model.zero_grad(set_to_none=True)
    model(dis, ref).sum().backward()
    assert all(p.grad is None for p in list(model.vit.parameters()) + list(model.cnn.parameters()))
    assert all(p.grad is not None for p in model.deform_net.parameters())
    assert all(p.grad is not None for p in model.regressor.parameters())
    model.zero_grad(set_to_none=True)
    model.eval()


def test_crop_that_is_not_a_patch_multiple_is_refused(model_factory):
    with pytest.raises(ValueError, match="divisible by 8"):
        model_factory(8)(torch.rand(1, 3, 36, 36), torch.rand(1, 3, 36, 36))


def test_weight_file_missing_used_key_is_an_error(tmp_path, backbone_files):
    sd = torch.load(backbone_files["resnet"], weights_only=True)
    del sd["layer1.2.conv3.weight"]
    del sd["fc.weight"]  # unused keys may be absent; a used one may not
    bad = tmp_path / "resnet_missing.pth"
    torch.save(sd, bad)
    with pytest.raises(AHIQError, match=r"resnet_missing\.pth.*layer1\.2\.conv3\.weight"):
        build_model(8, pretrained=False, vit_weights=backbone_files[8], resnet_weights=str(bad))


def test_weight_file_of_wrong_patch_size_is_an_error(backbone_files):
    with pytest.raises(AHIQError, match=r"vit_p16\.safetensors: its state dict does not fit "
                                         r"vit_base_patch8.*wrong shape"):
        build_model(8, pretrained=False, vit_weights=backbone_files[16], resnet_weights=backbone_files["resnet"])


def test_weight_file_wrapped_in_state_dict_loads(tmp_path, backbone_files, model_factory):
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": torch.load(backbone_files["resnet"], weights_only=True)}, wrapped)
    model = build_model(8, pretrained=False, vit_weights=backbone_files[8], resnet_weights=str(wrapped))
    torch.testing.assert_close(model.cnn.state_dict(), model_factory(8).cnn.state_dict(), rtol=0, atol=0)


def test_missing_weight_file_and_garbage_file(tmp_path, backbone_files):
    with pytest.raises(AHIQError, match=r"nope\.pth: backbone weights file not found"):
        build_model(8, pretrained=False, resnet_weights=str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file")
    with pytest.raises(AHIQError, match=r"garbage\.safetensors: cannot read backbone weights"):
        build_model(8, pretrained=False, vit_weights=str(garbage))
    hostile = tmp_path / "hostile.pth"
    torch.save({"x": Path}, hostile)  # a pickled class: refused, in one line, before any code could run
    with pytest.raises(AHIQError, match=r"hostile\.pth: not a checkpoint AHIQ can read: refused: "
                                         r"it holds Python objects") as caught:
        build_model(8, pretrained=False, resnet_weights=str(hostile))
    assert "\n" not in str(caught.value)


def test_failed_download_names_the_weights_and_never_falls_back(monkeypatch):
    calls = []

    def offline(tag, pretrained=False, **kwargs):
        calls.append((tag, pretrained))
        if pretrained:
            raise OSError("no network")
        return real(tag, pretrained=False, **kwargs)

    real = backbones_mod.timm.create_model
    monkeypatch.setattr(backbones_mod.timm, "create_model", offline)
    monkeypatch.setattr(backbones_mod, "_unreachable", lambda tag: None)  # the hub answers, the download fails
    with pytest.raises(AHIQError, match=VIT_TAGS[8].replace(".", r"\.") + ".*download.sh.*--vit_weights"):
        build_model(8, pretrained=True)
    assert calls == [(VIT_TAGS[8], True)]


def test_offline_without_local_weights_is_one_line_at_once(monkeypatch):
    """HF_HUB_OFFLINE=1 (or no route to the hub) and the weights not cached: the hub client is never started (it
    would retry for tens of seconds)."""
    calls = []
    monkeypatch.setattr(backbones_mod.timm, "create_model", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(backbones_mod, "_cached", lambda tag: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AHIQError, match=VIT_TAGS[8].replace(".", r"\.") + r" are not on this machine and "
                                        r"HF_HUB_OFFLINE is set; run `sh download.sh`"):
        build_model(8, pretrained=True)
    assert calls == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(backbones_mod.socket, "create_connection", _unreachable)
    with pytest.raises(AHIQError, match="huggingface.co cannot be reached"):
        build_model(8, pretrained=True)
    assert calls == []


def _unreachable(*args, **kwargs):
    raise OSError("Network is unreachable")


class _OomAbove(torch.nn.Module):
    """Wraps a model and raises CUDA's out-of-memory error for batches above ``limit`` (as a small GPU would)."""

    def __init__(self, model, limit: int) -> None:
        super().__init__()
        self.model, self.limit, self.batches = model, limit, []
        self.device, self.pool = model.device, model.pool

    def _call(self, fn, x, *rest):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.batches.append(x.shape[0])
        return fn(x, *rest)

    def reference(self, ref):
        return self._call(self.model.reference, ref)

    def score_maps(self, dis, ref_features):
        return self._call(self.model.score_maps, dis, ref_features)


def test_out_of_memory_halves_the_chunk_and_keeps_the_scores(tiny_factory, caplog):
    model = tiny_factory(8)  # the chunking is the subject: any architecture
    torch.manual_seed(3)
    dis, ref = (torch.randint(0, 256, (3, 5, 3, 32, 32), dtype=torch.uint8) for _ in range(2))
    expected = score_crops(model, dis, ref, crops_per_forward=50).scores
    small = _OomAbove(model, limit=4)
    chunk = ChunkSize(50)
    got = score_crops(small, dis, ref, chunk).scores
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # 50 -> 25 -> 12 -> 6 -> 3: 15 reference crops in 5 calls, then 15 distorted crops in 5 calls
    assert chunk.size == 3 and small.batches == [3] * 10
    assert "continuing with 3 crop pairs per forward" in caplog.text
    small.batches.clear()
    score_crops(small, dis, ref, chunk)  # the smaller size is kept: no more failed attempts
    assert small.batches == [3] * 10
    with pytest.raises(torch.OutOfMemoryError):  # nothing fits: the error is not swallowed
        score_crops(_OomAbove(model, limit=0), dis, ref, ChunkSize(2))


def test_bf16_autocast_scores_stay_within_one_percent_of_fp32(model_factory):
    """The whole model (real architecture) under CPU bf16 autocast, the numerics --amp uses on CUDA: the deformable
    sampling positions stay fp32, so scores move well under 1% (measured here: 0.36% at most over 6 crop pairs)."""
    model = model_factory(8)
    g = torch.Generator().manual_seed(0)
    dis, ref = torch.rand(6, 3, 32, 32, generator=g), torch.rand(6, 3, 32, 32, generator=g)
    with torch.no_grad():
        fp32 = model(dis, ref).flatten()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(dis, ref).float().flatten()
    assert fp32.abs().min() > 1e-2  # a relative comparison that means something
    deviation = ((bf16 - fp32).abs() / fp32.abs()).max().item()
    assert 0 < deviation < 0.01, deviation


def test_scores_leave_autocast_in_fp32(tiny_factory, monkeypatch):
    """Under bf16 autocast (CPU here, standing for --amp on CUDA) the patch maps are pooled in fp32, so a score is
    not rounded to bf16's 8 significant bits: nearby scores stay distinct (issue 30, item 2)."""
    import contextlib

    import engine.loop
    from engine.loop import score_crops

    monkeypatch.setattr(engine.loop, "autocast", lambda device, dtype: torch.autocast("cpu", dtype=torch.bfloat16)
                        if dtype is not None else contextlib.nullcontext())
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 1, 3, 32, 32, generator=g).expand(16, 1, 3, 32, 32).contiguous()
    dis = (ref + 0.3 * torch.rand(16, 1, 3, 32, 32, generator=g)).clamp(0, 1)
    scores = score_crops(tiny_factory(8), dis, ref, amp_dtype=torch.bfloat16).scores
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, score_crops(tiny_factory(8), dis, ref).scores, rtol=1e-2, atol=0)  # bf16 bars
    as_bf16 = scores.to(torch.bfloat16).float()
    assert not torch.equal(scores, as_bf16)  # values between bf16's steps survive
    assert len(set(scores.tolist())) > len(set(as_bf16.tolist()))  # more distinct than bf16 could hold


def _with_trained_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose ResNet BatchNorms hold statistics and affine weights far from their initial ones (so folding
    them is not a no-op)."""
    import copy
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(3)
    for m in model.cnn.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.3, 2.0), (m.weight.data, 0.5, 1.5),
                              (m.bias.data, -0.3, 0.3)):
                t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model


def test_folded_batchnorms_score_as_the_running_statistics_do(tiny_factory, tiny_ckpt):
    """The scorer's frozen ResNet with each BatchNorm folded into its convolution: no BatchNorm left, scores equal
    to the unfolded model's within fp32 rounding; the released per-call statistics (--bn_stats batch) are kept."""
    import copy

    from models.backbones import fold_batch_norms
    model = _with_trained_statistics(tiny_factory(8))
    folded = copy.deepcopy(model)
    assert fold_batch_norms(folded.cnn) == 11  # the stem, 3 per Bottleneck, the shortcut's
    assert not [m for m in folded.cnn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    dis, ref = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(dis, ref), model(dis, ref), rtol=1e-5, atol=1e-6)
        assert not torch.equal(folded.cnn(dis), tiny_factory(8).cnn(dis))  # the statistics mattered
    from engine.scorer import load_scorer  # the scorer folds them only where running statistics are used
    running, batch = (load_scorer(tiny_ckpt, pretrained=False, bn_stats=bn) for bn in ("running", "batch"))
    assert not [m for m in running.model.cnn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [m for m in batch.model.cnn.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_frozen_weights_cast_once_score_as_autocast_casts_them(tiny_factory):
    """Under bf16 autocast (the CPU's, as CUDA's runs), backbone convolutions and linear layers stored in bf16
    give the very scores of fp32 weights that autocast casts at every call; casting the norms too would not."""
    import copy

    from models.backbones import cast_products
    model = _with_trained_statistics(tiny_factory(8))
    cast = copy.deepcopy(model)
    for net in (cast.vit, cast.cnn):
        cast_products(net, torch.bfloat16)
    assert cast.vit.vit.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert cast.vit.vit.blocks[0].norm1.weight.dtype == torch.float32
    dis, ref = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for net in ("vit", "cnn"):  # the features, before the head's coarse bf16 score
            expected = getattr(model, net)(dis)
            torch.testing.assert_close(getattr(cast, net)(dis), expected, rtol=0, atol=0)
        torch.testing.assert_close(cast(dis, ref), model(dis, ref), rtol=0, atol=0)
        whole = copy.deepcopy(model.vit).to(torch.bfloat16)  # norms and the position embedding in bf16 too
        assert not torch.equal(whole(dis).float(), model.vit(dis))


def test_a_compiled_vit_scores_as_the_eager_one(tiny_factory, tiny_ckpt):
    """--compile_model: the frozen ViT compiled in place and the fusion compiled (torch.compile; here the
    aot_eager backend, which captures the graphs the GPU's inductor compiles) give the eager scores, with the same
    parameters and state-dict keys; the option reaches the scorer through the one assembly, and an ONNX export
    refuses it."""
    import copy

    from engine.scorer import load_scorer
    model = tiny_factory(8)
    compiled = copy.deepcopy(model).for_scoring(compile_backend="aot_eager")
    assert list(compiled.vit.state_dict()) == list(model.vit.state_dict())
    assert list(compiled.deform_net.state_dict()) == list(model.deform_net.state_dict())
    dis, ref = torch.rand(3, 4, 3, 32, 32), torch.rand(3, 4, 3, 32, 32)
    eager = score_crops(copy.deepcopy(model).for_scoring(), dis, ref, 5).scores
    torch.testing.assert_close(score_crops(compiled, dis, ref, 5).scores, eager, rtol=1e-6, atol=0)
    torch._dynamo.reset()
    on, off = (load_scorer(tiny_ckpt, pretrained=False, compile_model=c) for c in (True, False))
    assert on.model.vit._compiled_call_impl is not None and off.model.vit._compiled_call_impl is None
    assert "fuse" in vars(on.model.deform_net) and "fuse" not in vars(off.model.deform_net)
    assert on.weights() == off.weights()
    with pytest.raises(AHIQError, match="compile_model True needs the PyTorch model"):
        load_scorer("model.onnx", backend="onnxruntime", compile_model=True)


def test_the_model_refuses_crops_that_do_not_tile_its_grid_or_differ(tiny_factory):
    model = tiny_factory(8).eval()
    with pytest.raises(ValueError, match=r"divisible by 8, shaped as the reference crops \(1, 3, 32, 32\), got "
                                         r"\(1, 3, 40, 40\)"):
        model(torch.rand(1, 3, 40, 40), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"divisible by 8, got \(1, 3, 36, 36\)"):
        model.reference(torch.rand(1, 3, 36, 36))
    assert model(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)).shape == (1, 1)
