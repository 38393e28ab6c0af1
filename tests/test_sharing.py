"""Each reference computed once: the shared scoring loop equals scoring every pair on its own (lists with references
interleaved, grouped, or appearing once), computes each (reference, window) once, frees it after its last distorted
image, and keeps list order; the released test.py's random windows and its BatchNorm statistics (--bn_stats batch)
against an independent replay of its loop; windows drawn per reference."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import test as test_entry
from benchmarks.official_style import OfficialStyleBackbones, reference_scores
from data.images import read_rgb
from data.pair_dataset import PairDataset
from data.windows import crop_stack, official_windows
from engine.loop import ReferenceCache, predict, reference_shards, score_crops
from engine.scorer import Scorer, load_scorer
from tests.conftest import list_dataset, make_pipal_set, policy


def _dataset(root: Path, order: str, n_crops: int, **kwargs) -> PairDataset:
    data = make_pipal_set(root, n_refs=3, n_dis=4, size=(40, 44), seed=4)
    rows = list(zip(data["names"], [f"A{int(n[1:5]):04d}.bmp" for n in data["names"]]))
    if order == "interleaved":  # A0_0, A1_0, A2_0, A0_1, ...
        rows = [rows[r * 4 + d] for d in range(4) for r in range(3)]
    elif order == "once":  # one distorted image per reference
        rows = [rows[0], rows[4], rows[8]]
    pairs = [(n, f"{data['dis']}/{n}", f"{data['ref']}/{r}") for n, r in rows]
    return PairDataset(pairs, None, policy(32, n_crops, **kwargs))


class _CountingModel(torch.nn.Module):
    """Counts the reference and distorted crops the model is asked to compute."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.reference_rows, self.distorted_rows = model, 0, 0
        self.device, self.pool = model.device, model.pool

    def reference(self, ref):
        self.reference_rows += ref.shape[0]
        return self.model.reference(ref)

    def score_maps(self, dis, feats):
        self.distorted_rows += dis.shape[0]
        return self.model.score_maps(dis, feats)


@pytest.mark.parametrize("order", ["grouped", "interleaved", "once"])
@pytest.mark.parametrize("n_crops", [5, 12])
def test_shared_references_equal_scoring_every_pair_alone(tiny_factory, tmp_path, order, n_crops, monkeypatch):
    ds = _dataset(tmp_path, order, n_crops)
    model = _CountingModel(tiny_factory(8))
    live = []
    release = ReferenceCache.release

    def watch(cache, keys, counts):
        release(cache, keys, counts)
        live.append(len(cache.features))

    monkeypatch.setattr(ReferenceCache, "release", watch)
    out = predict(model, ds, None, 2, 0, 7, progress=False)
    alone = torch.cat([score_crops(model.model, ds[i]["dis"][None], ds[i]["ref"][None]).scores
                       for i in range(len(ds))])
    assert out.names == ds.names and out.index.tolist() == list(range(len(ds)))  # list order kept
    np.testing.assert_allclose(out.preds, alone.double().numpy(), rtol=1e-5, atol=1e-7)
    unique = {(ds.reference_key(i), *window) for i in range(len(ds)) for window in ds.windows(i)}  # 12 may repeat
    assert len(unique) <= 3 * n_crops and model.reference_rows == len(unique)  # each computed once
    windows = sum(len(set(ds.windows(i))) for i in range(len(ds)))  # a window drawn twice is scored once
    assert model.distorted_rows == windows
    assert live[-1] == 0 and max(live) <= n_crops  # freed after the last distorted image of each reference


def test_an_image_of_the_crop_size_is_computed_once_whatever_the_ensemble(tiny_factory, tmp_path):
    data = make_pipal_set(tmp_path, n_refs=2, n_dis=2, size=(32, 32), seed=5)
    pairs = [(n, f"{data['dis']}/{n}", f"{data['ref']}/{n[:5]}.bmp") for n in data["names"]]
    model = _CountingModel(tiny_factory(8))
    twenty = predict(model, PairDataset(pairs, None, policy(32, 20)), None, 10, 0, 50, progress=False)
    assert (model.reference_rows, model.distorted_rows) == (2, 4)  # 20 identical windows: one crop each
    one = predict(model, PairDataset(pairs, None, policy(32, 1)), None, 10, 0, 50, progress=False)
    np.testing.assert_allclose(twenty.preds, one.preds, rtol=1e-6)


def test_random_windows_follow_the_reference_not_the_distorted_image(tmp_path):
    ds = _dataset(tmp_path, "grouped", 12)
    assert ds.windows(0) == ds.windows(3) != ds.windows(4)  # A0000's images share windows; A0001's differ
    again = _dataset(tmp_path / "again", "interleaved", 12)
    assert again.windows(0) == ds.windows(0)  # seeded by (seed, reference pixels): not by position or order


def _released_loop_windows(n_images: int, batch_size: int, n_ensemble: int, h: int, w: int, crop: int,
                           seed: int) -> list[list[tuple[int, int]]]:
    """The window draws of the released test.py, written as it is: setup_seed, then per batch, per crop index."""
    np.random.seed(seed)
    windows = []
    for start in range(0, n_images, batch_size):
        drawn = []
        for _ in range(n_ensemble):
            top = np.random.randint(0, h - crop)
            left = np.random.randint(0, w - crop)
            drawn.append((top, left))
        windows += [drawn] * min(batch_size, n_images - start)
    return windows


def test_official_windows_are_the_released_stream():
    expected = _released_loop_windows(1650, 10, 20, 288, 288, 224, 1919)  # the NTIRE 2022 test set
    assert official_windows([(288, 288)] * 1650, 224, 20, 10, 1919) == expected
    assert official_windows([(288, 288)] * 23, 224, 20, 10, 1919) == expected[:23]  # incomplete last batch scored
    assert official_windows([(288, 288)] * 20, 224, 20, 4, 1919) != expected[:20]  # it depends on the batch size
    assert all(0 <= t <= 63 and 0 <= x <= 63 for image in expected[:50] for t, x in image)  # last offset never drawn


def test_test_py_with_official_windows_scores_them(tmp_path, tiny_ckpt):
    data = make_pipal_set(tmp_path / "set", n_refs=2, n_dis=3, size=(40, 44), seed=6)
    model = load_scorer(tiny_ckpt, pretrained=False).model  # built as test.py builds it (random backbones, seeded)
    result = test_entry.main(["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list",
                            data["list"], "--ckpt", tiny_ckpt, "--crop_size", "32", "--n_ensemble", "12",
                            "--batch_size", "4", "--random_windows", "official", "--gpu_ids", "-1", "--num_workers",
                            "0", "--checkpoints_dir", str(tmp_path), "--name", "scored", "--no_pretrained"])
    lines = Path(result["predictions"]).read_text().splitlines()
    windows = _released_loop_windows(6, 4, 12, 40, 44, 32, 1919)
    assert [line.split(",")[0] for line in lines] == data["names"]
    for i, line in enumerate(lines):
        name = data["names"][i]
        dis, ref = (crop_stack(read_rgb(p), windows[i], 32)[None] for p in (f"{data['dis']}/{name}",
                                                                               f"{data['ref']}/{name[:5]}.bmp"))
        assert float(line.split(",")[1]) == pytest.approx(score_crops(model, dis, ref).scores.item(), rel=1e-5)


def _released_test_loop(backbones: OfficialStyleBackbones, heads: dict, data: dict, batch_size: int,
                        n_ensemble: int, crop: int, seed: int) -> list[float]:
    """The released test.py's loop, written as it is and independently of the project: modules left in training
    mode (it never calls .eval()), numpy seeded, then per batch of the list (in order; the last, incomplete one
    too), per crop index one window for the whole batch, the distorted crops through the backbones in one call and
    the reference crops in another (forward hooks), the prediction averaged over the crop indices."""
    backbones.vit.train()
    backbones.resnet.train()
    names = data["names"]
    images = [[torch.from_numpy(read_rgb(f"{folder}/{name}").transpose(2, 0, 1).copy()).float() / 255
               for folder, name in ((data["dis"], n), (data["ref"], n[:5] + ".bmp"))] for n in names]
    h, w = images[0][0].shape[1:]
    windows = _released_loop_windows(len(names), batch_size, n_ensemble, h, w, crop, seed)
    scores: list[float] = []
    for start in range(0, len(names), batch_size):
        d_img = torch.stack([dis for dis, _ in images[start:start + batch_size]])
        r_img = torch.stack([ref for _, ref in images[start:start + batch_size]])
        pred = 0
        for i in range(n_ensemble):
            top, left = windows[start][i]
            window = (slice(None), slice(None), slice(top, top + crop), slice(left, left + crop))
            pred = pred + reference_scores(backbones, heads["deform_net"], heads["regressor"], d_img[window],
                                           r_img[window])
        scores += (pred / n_ensemble).flatten().tolist()
    return scores


@pytest.mark.slow
def test_bn_stats_batch_replays_the_released_test_loop(tmp_path, model_factory, backbone_files):
    """--bn_stats batch against the released loop on the real architectures, random weights with real BatchNorm
    statistics: 6 images of 2 references in batches of 4, so the first batch mixes both references and the second
    shares one and is incomplete (2 images: the full ResNet of the replay needs 2 values per channel). Crops of 16,
    the smallest (2x2 patches; the replay's layer3 and layer4 at 1x1, still 2 values per channel in that batch): 13 s
    here instead of 20 s at 32. The released random windows need 10 or more crops (fewer are the fixed ones)."""
    batch_size = 4
    data = make_pipal_set(tmp_path / "set", n_refs=2, n_dis=3, size=(40, 44), seed=7)
    g = torch.Generator().manual_seed(5)
    heads = {part: {k: v + torch.randn(v.shape, generator=g) * 0.02 for k, v in sd.items()}
             for part, sd in model_factory(8).trainable_state_dict().items()}
    ckpt = tmp_path / "official.pth"
    torch.save({f"{part}_model_state_dict": sd for part, sd in heads.items()}, ckpt)
    args = ["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list", data["list"], "--ckpt",
            str(ckpt), "--crop_size", "16", "--n_ensemble", "10", "--batch_size", str(batch_size),
            "--random_windows", "official", "--gpu_ids", "-1", "--num_workers", "0", "--checkpoints_dir",
            str(tmp_path), "--vit_weights", backbone_files[8], "--resnet_weights", backbone_files["resnet"]]
    batch = test_entry.main([*args, "--bn_stats", "batch", "--test_file_name", "batch.txt"])
    scores = [float(line.split(",")[1]) for line in Path(batch["predictions"]).read_text().splitlines()]
    expected = _released_test_loop(OfficialStyleBackbones(8, backbone_files[8], backbone_files["resnet"]), heads,
                                   data, batch_size, 10, 16, 1919)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)  # (that batch differs from running: the next test)


def test_batch_statistics_neither_use_nor_change_the_running_ones(tiny_factory, pipal_set):
    model = copy.deepcopy(tiny_factory(8))  # a ResNet with BatchNorm layers (models/tiny.py)
    g = torch.Generator().manual_seed(0)
    for bn in (m for m in model.cnn.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # statistics of some data
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 3)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) * 10 + 0.01)
    buffers = {k: v.clone() for k, v in model.cnn.state_dict().items()}
    ds = list_dataset(pipal_set, 32, 5)
    running = Scorer(model, policy(32, 5), 50)
    before = running.score_dataset(ds, 4, progress=False).preds
    batch = Scorer(model, policy(32, 5), 50, bn_stats="batch").score_dataset(ds, 4, progress=False).preds
    assert np.max(np.abs(batch - before)) > 1e-5  # other statistics: far beyond float rounding (~1e-8 here)
    assert all(torch.equal(v, model.cnn.state_dict()[k]) for k, v in buffers.items())  # num_batches_tracked too
    assert not any(m.training for m in model.cnn.modules())
    np.testing.assert_array_equal(running.score_dataset(ds, 4, progress=False).preds, before)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_validation_shards_hold_whole_references_balanced_by_count(world):
    sizes = [5, 1, 3, 3, 2, 7, 1, 4]  # images per reference, interleaved in the list as a label file may be
    refs = [r for r, n in enumerate(sizes) for _ in range(n)]
    order = list(np.random.default_rng(0).permutation(len(refs)))
    reference_of = {i: refs[j] for i, j in enumerate(order)}.__getitem__
    shards = reference_shards(list(range(len(refs))), reference_of, world)
    assert sorted(i for s in shards for i in s) == list(range(len(refs)))  # a partition: nothing dropped or repeated
    owners = {reference_of(i): k for k, s in enumerate(shards) for i in s}
    assert all(owners[reference_of(i)] == k for k, s in enumerate(shards) for i in s)  # one rank per reference
    lengths = [len(s) for s in shards]
    assert max(lengths) - min(lengths) <= max(sizes)
    assert shards == reference_shards(list(range(len(refs))), reference_of, world)  # deterministic
