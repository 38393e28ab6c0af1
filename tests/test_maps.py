"""Patch maps and grid windows: the maps pool to the score they come from, sit at their windows on the image's pixel
grid, point at where an image is distorted; grid windows cover every pixel; predict.py --maps and test.py --worst
write figures that open at the expected size."""
from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import test as test_script
from data.windows import grid_windows
from engine.scorer import Metric, Scorer, load_scorer
from tests.conftest import policy, run_entry
from utils.checkpoint import save_weights
from utils.quality_maps import image_maps

SWITCHES = [{}, {"pooling": "mean"}, {"branches": "vit"}, {"branches": "cnn", "fusion": "conv"},
            {"fusion": "none"}]


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()) or "paper")
def test_the_maps_pool_to_the_score_of_their_crop(tiny_factory, switches):
    model = tiny_factory(8, **switches)
    g = torch.Generator().manual_seed(1)
    dis, ref = torch.rand(3, 3, 32, 32, generator=g), torch.rand(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        feats = model.reference(ref)
        f, w = model.score_maps(dis, feats)
        score = model.score(dis, feats).view(-1).double()
    assert f.shape == (3, 1, 4, 4)
    if switches.get("pooling") == "mean":
        assert w is None
        pooled = f.double().mean(dim=(1, 2, 3))
    else:
        assert w.shape == f.shape and (w > 0).all()
        pooled = (f.double() * w.double()).sum(dim=(1, 2, 3)) / w.double().sum(dim=(1, 2, 3))
    torch.testing.assert_close(pooled, score, rtol=1e-6, atol=0)
    # on the image grid (one window = the whole image), the contributions of a crop add up to its score
    maps = Scorer(model, policy(32, 1), 50).score_tensors(dis, ref, return_maps=True)[1]
    for m, s in zip(maps, score.tolist()):
        assert m.f.shape == (32, 32) and m.covered.all() and (m.w is None) == (switches.get("pooling") == "mean")
        assert m.contribution.astype(np.float64).sum() / 64 == pytest.approx(s, rel=1e-5)  # 8x8 pixels a patch


def test_crop_maps_are_averaged_where_windows_overlap_and_uncovered_pixels_marked():
    f = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0)])
    f[0, 0, 0] = 5.0
    maps = image_maps(2.0, f, None, [(0, 0), (0, 8)], 16, (20, 24))
    assert maps.f.shape == (20, 24)
    assert maps.f[0, 0] == 5.0 and maps.f[10, 4] == 1.0  # window 1 only (columns 0-7)
    assert maps.f[10, 10] == 2.0  # both windows: the mean of 1 and 3
    assert maps.f[10, 20] == 3.0  # window 2 only
    assert np.isnan(maps.f[18]).all() and not maps.covered[16:].any() and maps.covered[:16].all()  # no window
    assert np.isnan(maps.contribution[18]).all()


@pytest.mark.parametrize("size", [(224, 224), (225, 225), (288, 288), (333, 500), (1080, 1920)])
def test_grid_windows_cover_every_pixel_with_the_fewest_windows(size):
    h, w, crop = *size, 224
    windows = grid_windows(h, w, crop)
    assert windows == grid_windows(h, w, crop)  # deterministic
    assert len(windows) == math.ceil(h / crop) * math.ceil(w / crop)  # 1, 4, 4, 6, 45
    cover = np.zeros(size, int)
    for top, left in windows:
        assert 0 <= top <= h - crop and 0 <= left <= w - crop
        cover[top:top + crop, left:left + crop] += 1
    assert cover.min() >= 1
    for axis, n in ((0, h), (1, w)):
        starts = sorted({win[axis] for win in windows})
        assert starts[0] == 0 and starts[-1] == n - crop  # flush with both borders
        assert all(0 < b - a <= crop for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("corner", ["top_left", "bottom_right"])
def test_a_distortion_in_one_quadrant_shows_in_that_quadrant(tiny_factory, corner):
    """80x80 pairs, 32 px grid windows (9), the tiny AHIQ with random weights: measured, 64% (top left) and 61%
    (bottom right) of the change of the contribution map lies in the distorted quadrant, a quarter of the image."""
    scorer = Scorer(tiny_factory(8), policy(32, 20, layout="grid"), 50)
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 80, 80, generator=g)
    dis = ref.clone()
    rows = cols = slice(0, 40) if corner == "top_left" else slice(40, 80)
    dis[:, :, rows, cols] = (dis[:, :, rows, cols] + 0.3 * torch.randn(1, 3, 40, 40, generator=g)).clamp(0, 1)
    (same,), (hurt,) = scorer.score_tensors(ref, ref, return_maps=True)[1], scorer.score_tensors(dis, ref, True)[1]
    assert len(hurt.windows) == 9 and hurt.covered.all()
    change = np.abs(hurt.contribution - same.contribution)
    assert change[rows, cols].sum() / change.sum() > 0.5


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def test_predict_maps_and_grid_scores(tmp_path, tiny_factory, capsys):
    ckpt = tmp_path / "m.pth"
    save_weights(str(ckpt), tiny_factory(8))
    g = np.random.default_rng(3)
    ref = g.integers(0, 256, (50, 90, 3), dtype=np.uint8)
    dis = np.clip(ref.astype(int) + g.integers(-40, 40, ref.shape), 0, 255).astype(np.uint8)
    Image.fromarray(ref).save(tmp_path / "ref.png")
    Image.fromarray(dis).save(tmp_path / "dis.png")
    out = run_entry(capsys, "predict.py", "--dis", str(tmp_path / "dis.png"), "--ref", str(tmp_path / "ref.png"),
                    "--ckpt", str(ckpt), "--no_pretrained", "--gpu_ids", "-1", "--num_workers", "0",
                    "--crop_size", "32", "--windows", "grid", "--maps", str(tmp_path / "maps"))
    assert out.returncode == 0, out.stderr
    printed = float(out.stdout.splitlines()[-1].split()[-1])
    arrays = np.load(tmp_path / "maps" / "dis_maps.npz")
    assert arrays["f"].shape == arrays["w"].shape == arrays["contribution"].shape == (50, 90)
    assert arrays["covered"].all() and len(arrays["windows"]) == 2 * 3
    assert float(arrays["score"]) == pytest.approx(printed, abs=1e-4)
    width, height = _png_size((tmp_path / "maps" / "dis_maps.png").read_bytes())
    assert width == 1600 and 150 < height < 300  # five 3.2-inch panels at 100 dpi, of a 50x90 image
    # the grid score is the mean over its windows, as the API computes it from tensors
    scorer = load_scorer(str(ckpt), str(tmp_path), pretrained=False, crop_size=32, windows="grid")
    tensors = [torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255 for a in (dis, ref)]
    assert scorer.score_tensors(*tensors).item() == pytest.approx(printed, abs=1e-4)
    scores, maps = Metric(scorer)(str(tmp_path / "dis.png"), str(tmp_path / "ref.png"), return_maps=True)
    assert scores.item() == pytest.approx(printed, abs=1e-4) and np.allclose(maps[0].f, arrays["f"], rtol=1e-3, atol=0)
    assert arrays["f"].dtype == np.float16 and arrays["score"].dtype == np.float64  # compact maps, exact score


def test_test_py_draws_the_worst_predictions(tmp_path, pipal_set, tiny_ckpt):
    result = test_script.main(["--test_ref_path", pipal_set["ref"], "--test_dis_path", pipal_set["dis"],
                               "--test_list", pipal_set["list"], "--ckpt", tiny_ckpt, "--n_ensemble", "3",
                               "--checkpoints_dir", str(tmp_path), "--no_pretrained", "--gpu_ids", "-1",
                               "--num_workers", "0", "--crop_size", "32", "--worst", "2", "--name", "scored"])
    assert result["worst"] == os.path.join(str(tmp_path), "scored", "results_worst.png")
    width, height = _png_size(open(result["worst"], "rb").read())
    assert width == 1500 and height > 2 * 200  # two rows of five 3-inch panels at 100 dpi


def test_maps_with_per_call_batchnorm_are_refused_everywhere(tiny_factory, tmp_path, capsys):
    """The one rule (models.ahiq.check_maps) at the door (predict.py, before loading) and in the loop (the API)."""
    proc = run_entry(capsys, "predict.py", "--dis", "a.png", "--ref", "b.png", "--maps", str(tmp_path / "maps"),
                     "--bn_stats", "batch", "--gpu_ids", "-1")
    assert proc.returncode == 2 and "bn_stats running only" in proc.stderr and "drop bn_stats batch" in proc.stderr
    assert not (tmp_path / "maps").exists()
    model = tiny_factory(8)
    dis = ref = torch.rand(1, 1, 3, 32, 32)
    from engine.loop import score_crops
    from utils.errors import AHIQError
    with pytest.raises(AHIQError, match="bn_stats running only"):
        score_crops(model, dis, ref, bn_stats="batch", keep_maps=True)
