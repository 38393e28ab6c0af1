"""List parsing (real PIPAL lists and edge cases), image reading, crop windows, and bad-input errors."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from benchmarks.official_style import official_five_point_window
from data.images import read_rgb
from data.label_norm import LabelNorm
from data.pipal import read_list
from data.windows import crop_windows, fixed_windows, train_window
from tests.conftest import FIXTURES, LISTS, list_dataset, needs_fixtures
from utils.errors import AHIQError


def test_real_pipal_lists():
    """The published lists as shipped in data/lists (the same files as ../shared/fixtures/pipal)."""
    names, scores = read_list(str(LISTS / "pipal22_train_mos.txt"))  # ', ' and no final newline
    assert len(names) == 23200 and scores.shape == (23200,)
    assert names[0] == "A0001_00_00.bmp" and scores[0] == pytest.approx(1520.0648)
    assert names[-1] == "A0248_06_26.bmp" and scores[-1] == pytest.approx(1257.0600)
    assert len({n[:5] for n in names}) == 200
    names, scores = read_list(str(LISTS / "ntire21_val_mos.txt"))
    assert len(names) == 1000 and scores[0] == pytest.approx(1238.7325)
    names, scores = read_list(str(LISTS / "ntire22_fr_test_names.txt"))
    assert len(names) == 1650 and scores is None and names[0] == "A0000_10_00.bmp"


def test_list_formats(tmp_path):
    f = tmp_path / "l.txt"
    f.write_text("\ufeffa_1.bmp,1.5\r\n\r\nb_2.bmp, 2.5\n  \nc_3.bmp ,  3\n")
    names, scores = read_list(str(f))
    assert names == ["a_1.bmp", "b_2.bmp", "c_3.bmp"] and scores.tolist() == [1.5, 2.5, 3.0]
    f.write_text("x.bmp\ny.bmp")
    assert read_list(str(f)) == (["x.bmp", "y.bmp"], None)


@pytest.mark.parametrize("text,line,what", [
    ("a.bmp,1\nb.bmp,1,2\n", 2, "expected 'name,score'"),
    ("a.bmp,1\nb.bmp,high\n", 2, "is not a finite number"),
    ("a.bmp,1\n\nb.bmp\n", 3, "some lines have a score"),
    ("a.bmp\nb.bmp,3\n", 2, "some lines have a score"),
    (",3\n", 1, "expected 'name,score'"),
    ("a.bmp,nan\n", 1, "not a finite number"),
])
def test_malformed_list_lines_name_file_and_line(tmp_path, text, line, what):
    f = tmp_path / "bad_list.txt"
    f.write_text(text)
    with pytest.raises(AHIQError, match=rf"bad_list\.txt:{line}: .*{what}"):
        read_list(str(f))


def test_empty_and_missing_list(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(AHIQError, match=r"empty\.txt: the list is empty"):
        read_list(str(tmp_path / "empty.txt"))
    with pytest.raises(AHIQError, match=r"gone\.txt: label file not found"):
        read_list(str(tmp_path / "gone.txt"))


def test_minmax_normalise_is_the_official_one():
    s = np.array([1200.0, 1500.0, 1800.0, 1350.0])
    norm = LabelNorm.fit(s)
    assert (norm.mos_min, norm.mos_max) == (1200.0, 1800.0)
    np.testing.assert_allclose(norm.apply(s), (s - s.min()) / (s.max() - s.min()))
    np.testing.assert_allclose(norm.apply(s), [0.0, 0.5, 1.0, 0.25])
    np.testing.assert_allclose(norm.invert(norm.apply(s)), s)


def test_images_are_read_as_8bit_rgb(tmp_path):
    bgr = np.zeros((6, 7, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 30
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    assert read_rgb(str(tmp_path / "c.png"))[0, 0].tolist() == [30, 20, 10]
    cv2.imwrite(str(tmp_path / "g.png"), np.full((5, 5), 77, np.uint8))
    g = read_rgb(str(tmp_path / "g.png"))
    assert g.shape == (5, 5, 3) and g.dtype == np.uint8 and (g == 77).all()
    rgba = np.dstack([bgr[:5, :5], np.full((5, 5), 9, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    assert read_rgb(str(tmp_path / "a.png"))[0, 0].tolist() == [30, 20, 10]
    cv2.imwrite(str(tmp_path / "d16.png"), np.full((4, 4, 3), 256 * 200 + 99, np.uint16))
    d16 = read_rgb(str(tmp_path / "d16.png"))
    assert d16.dtype == np.uint8 and (d16 == 200).all()


@needs_fixtures()
def test_real_kadid_image():
    img = read_rgb(str(FIXTURES / "kadid10k" / "I01.png"))
    assert img.shape == (384, 512, 3) and img.dtype == np.uint8 and img.std() > 10


def test_fixed_windows_positions_and_order():
    h, w, c = 288, 320, 224
    assert fixed_windows(h, w, c) == [official_five_point_window(i, h, w, c) for i in range(9)]
    assert fixed_windows(h, w, c) == [(0, 0), (0, 96), (64, 0), (64, 96), (32, 48), (32, 0), (32, 96), (0, 48),
                                      (64, 48)]
    assert crop_windows(h, w, c, 5, 0, 0) == fixed_windows(h, w, c)[:5]
    assert crop_windows(h, w, c, 1, 0, 0) == [(32, 48)]
    assert crop_windows(224, 224, 224, 1, 0, 0) == [(0, 0)]  # the whole image when it has the crop size


def test_random_windows_seeded_by_seed_and_key():
    a = crop_windows(288, 300, 224, 20, 1919, 12345)
    assert a == crop_windows(288, 300, 224, 20, 1919, 12345)
    assert a != crop_windows(288, 300, 224, 20, 1919, 12346)
    assert a != crop_windows(288, 300, 224, 20, 7, 12345)
    tops, lefts = zip(*a)
    assert len(a) == 20 and 0 <= min(tops) and max(tops) <= 64 and 0 <= min(lefts) and max(lefts) <= 76
    assert len(set(a)) > 10
    many = [t for i in range(200) for t, _ in crop_windows(230, 230, 224, 10, i, 0)]
    assert set(many) == set(range(7))  # every valid offset, the last one included


def test_dataset_crops_match_windows(pipal_set):
    ds = list_dataset(pipal_set, crop_size=32, n_crops=5)
    item = ds[4]
    assert item["dis"].shape == (5, 3, 32, 32) and item["dis"].dtype.is_floating_point is False
    img = read_rgb(ds.paths(4)[0])
    for k, (t, left) in enumerate(fixed_windows(48, 56, 32)[:5]):
        np.testing.assert_array_equal(item["dis"][k].numpy().transpose(1, 2, 0), img[t:t + 32, left:left + 32])
    ref_img = read_rgb(ds.paths(4)[1])
    np.testing.assert_array_equal(item["ref"][0].numpy().transpose(1, 2, 0), ref_img[:32, :32])
    assert ds.paths(4)[1].endswith("A0001.bmp")
    assert item["label"] == pytest.approx(ds.labels[4]) and 0 <= ds.labels.min() and ds.labels.max() == 1


def test_dataset_flip_and_resize(pipal_set):
    flipped = list_dataset(pipal_set, 32, 1, flip=True)
    img = read_rgb(flipped.paths(0)[0])[:, ::-1]
    t, left = fixed_windows(48, 56, 32)[4]
    np.testing.assert_array_equal(flipped[0]["dis"][0].numpy().transpose(1, 2, 0), img[t:t + 32, left:left + 32])
    resized = list_dataset(pipal_set, 32, 1, resize=32)
    expected = cv2.resize(read_rgb(resized.paths(0)[0]), (32, 32))
    np.testing.assert_array_equal(resized[0]["dis"][0].numpy().transpose(1, 2, 0), expected)


def _set_with(pipal_set, **kw):
    return list_dataset(pipal_set, **kw)


def test_bad_images_are_named(pipal_set, tmp_path):

    dis, ref = pipal_set["dis"], pipal_set["ref"]
    with pytest.raises(AHIQError, match=r"A0000_00_00\.bmp: 56x48 is smaller than crop_size 64.*resized"):
        _set_with(pipal_set, crop_size=64)
    _set_with(pipal_set, crop_size=64, resize=64)  # fine once resized
    os.rename(os.path.join(dis, "A0001_00_02.bmp"), tmp_path / "moved.bmp")
    with pytest.raises(AHIQError, match=r"dis/A0001_00_02\.bmp: image not found"):
        _set_with(pipal_set, crop_size=32)
    os.rename(tmp_path / "moved.bmp", os.path.join(dis, "A0001_00_02.bmp"))
    cv2.imwrite(os.path.join(dis, "A0000_00_01.bmp"), np.zeros((50, 56, 3), np.uint8))
    with pytest.raises(AHIQError, match=r"A0000_00_01\.bmp: size 56x50 differs from its reference .*A0000\.bmp"):
        _set_with(pipal_set, crop_size=32)
    with open(os.path.join(ref, "A0000.bmp"), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(AHIQError, match=r"ref/A0000\.bmp: cannot be decoded as an image \(its header"):
        _set_with(pipal_set, crop_size=32)
    os.remove(os.path.join(ref, "A0000.bmp"))
    with pytest.raises(AHIQError, match=r"ref/A0000\.bmp: image not found"):
        _set_with(pipal_set, crop_size=32)


def test_damaged_pixels_are_named_at_decode(pipal_set):

    path = os.path.join(pipal_set["dis"], "A0001_00_01.bmp")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # the header is intact, the pixels are not
    ds = _set_with(pipal_set, crop_size=32)
    with pytest.raises(AHIQError, match=r"A0001_00_01\.bmp: cannot be decoded"):
        ds[4]


def _windows_of(crop: np.ndarray, img: np.ndarray, size: int) -> list[tuple[int, int]]:
    h, w = img.shape[:2]
    return [(t, x) for t in range(h - size + 1) for x in range(w - size + 1)
            if np.array_equal(crop, img[t:t + size, x:x + size])]


@pytest.mark.parametrize("axis", ["vertical", "horizontal"])
def test_training_samples_are_seeded_share_one_window_and_flip_the_chosen_axis(pipal_set, axis):
    """A training sample is one window of both images, then with p=0.5 both crops flipped: up-down by default, as
    the official np.fliplr on a C x H x W crop; left-right with --flip_axis horizontal."""
    ds = _set_with(pipal_set, crop_size=32, n_crops=1, flip_axis=axis)
    a = ds[(3, 4)]
    assert a["dis"].shape == (1, 3, 32, 32) and torch.equal(a["dis"], ds[(3, 4)]["dis"])
    assert not torch.equal(ds[(4, 4)]["dis"], a["dis"])  # a new epoch draws a new window
    dis, ref = (read_rgb(p) for p in ds.paths(4))
    undo = (lambda c: c[::-1]) if axis == "vertical" else (lambda c: c[:, ::-1])
    n_flipped = 0
    for epoch in range(12):
        item = ds[(epoch, 4)]
        d_crop, r_crop = (item[k][0].numpy().transpose(1, 2, 0) for k in ("dis", "ref"))
        plain = _windows_of(d_crop, dis, 32)
        flipped = _windows_of(undo(d_crop), dis, 32)
        assert plain or flipped, f"the training crop is not a window of the image, {axis}ly flipped or not"
        if not plain:
            n_flipped += 1
            r_crop = undo(r_crop)
        t, x = (plain or flipped)[0]
        assert r_crop.tolist() == ref[t:t + 32, x:x + 32].tolist()  # the same window and flip on the reference
    assert 0 < n_flipped < 12  # random flips, both outcomes occur


def test_training_windows_follow_the_official_randcrop_range():
    """RandCrop's np.random.randint(0, h - 224): offsets 0 .. h - crop - 1, the last one never drawn; an image of the
    crop size itself is taken whole."""
    rng = np.random.default_rng(0)
    drawn = [train_window(rng, 40, 36, 32) for _ in range(4000)]
    assert {t for t, _ in drawn} == set(range(8)) and {x for _, x in drawn} == set(range(4))
    assert {train_window(rng, 32, 32, 32) for _ in range(20)} == {(0, 0)}


def test_sampler_shards_cover_every_image_and_resume_mid_epoch():
    from data.sampler import EpochSampler
    shards = [EpochSampler(11, seed=5, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    seen = [i for s in shards for _, i in s]
    assert len(seen) == 12 and set(seen) == set(range(11))  # 11 images, 3 ranks: one repeat pads the last share
    single = EpochSampler(11, seed=5)
    single.set_epoch(2)
    full = list(single)
    single.set_epoch(2, skip=4)
    assert list(single) == full[4:] and len(single) == 7
    single.set_epoch(3)
    assert [i for _, i in single] != [i for _, i in full] and all(e == 3 for e, _ in single)
