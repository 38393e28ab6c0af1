"""predict.py and the scoring API: the same scores as test.py, folder matching, MOS units, CSV, real images."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict
import test as test_script
from data.images import read_rgb
from engine.scorer import load_scorer
from tests.conftest import FIXTURES, needs_fixtures
from utils.checkpoint import save_weights
from utils.errors import AHIQError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_factory) -> str:
    """A tiny AHIQ's checkpoint with a MOS range (its backbones are random: named in the file, built from the seed)."""
    path = tmp_path_factory.mktemp("predict") / "ours.pth"
    save_weights(str(path), tiny_factory(8), meta={"mos_min": 1000.0, "mos_max": 1600.0})
    return str(path)


def _weights(backbone_files=None) -> list[str]:
    """Backbones: the real architectures' weight files when given, else random (the tiny checkpoint's)."""
    files = ["--vit_weights", backbone_files[8], "--resnet_weights", backbone_files["resnet"]] if backbone_files \
        else ["--no_pretrained"]
    return [*files, "--gpu_ids", "-1", "--num_workers", "0"]


def test_api_scores_equal_test_py(tmp_path, pipal_set, ckpt):
    result = test_script.main(["--test_ref_path", pipal_set["ref"], "--test_dis_path", pipal_set["dis"],
                               "--test_list", pipal_set["list"], "--ckpt", ckpt, "--crop_size", "32",
                               "--n_ensemble", "12", "--checkpoints_dir", str(tmp_path), "--name", "scored",
                               *_weights()])
    expected = [float(line.split(",")[1]) for line in Path(result["predictions"]).read_text().splitlines()]
    scorer = load_scorer(ckpt, str(tmp_path), pretrained=False, crop_size=32, n_ensemble=12)
    pairs = [(os.path.join(pipal_set["dis"], n), os.path.join(pipal_set["ref"], n[:5] + ".bmp"))
             for n in pipal_set["names"]]
    np.testing.assert_allclose(scorer.score_files(pairs), expected, rtol=1e-6)
    np.testing.assert_allclose(scorer.score_files(pairs), expected, rtol=1e-6)  # deterministic


def test_score_tensors_equals_score_files_for_fixed_windows(pipal_set, ckpt, tmp_path):
    scorer = load_scorer(ckpt, str(tmp_path), pretrained=False, crop_size=32, n_ensemble=5)
    names = pipal_set["names"][:3]
    pairs = [(os.path.join(pipal_set["dis"], n), os.path.join(pipal_set["ref"], n[:5] + ".bmp")) for n in names]
    dis, ref = (torch.stack([torch.from_numpy(read_rgb(p[k]).transpose(2, 0, 1).copy()).float() / 255
                             for p in pairs]) for k in (0, 1))
    np.testing.assert_allclose(scorer.score_tensors(dis, ref).numpy(), scorer.score_files(pairs), rtol=1e-5)
    with pytest.raises(AHIQError, match="smaller than the crop size"):
        scorer.score_tensors(dis[:, :, :16], ref[:, :, :16])


def test_predict_folders_csv_and_mos_units(tmp_path, pipal_set, ckpt, capsys):
    dis_dir, ref_dir = tmp_path / "d", tmp_path / "r"
    dis_dir.mkdir()
    ref_dir.mkdir()
    for name in pipal_set["names"][:3]:
        os.symlink(os.path.join(pipal_set["dis"], name), dis_dir / name)
        os.symlink(os.path.join(pipal_set["ref"], name[:5] + ".bmp"), ref_dir / name)
    args = ["--dis_dir", str(dis_dir), "--ref_dir", str(ref_dir), "--ckpt", ckpt, "--crop_size", "32",
            "--n_ensemble", "5", *_weights()]
    scores = predict.main(args + ["--csv", str(tmp_path / "out.csv")])
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert [Path(r["dis"]).name for r in rows] == sorted(pipal_set["names"][:3])
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores, rtol=1e-6)
    assert "normalised, higher is better" in capsys.readouterr().out
    mos = predict.main(args + ["--mos_scale"])
    np.testing.assert_allclose(mos, 1000 + np.array(scores) * 600, rtol=1e-6)
    os.remove(ref_dir / pipal_set["names"][0])
    with pytest.raises(AHIQError, match=rf"the same file name: 1 of 3 without a reference \(e.g. "
                                        rf"{pipal_set['names'][0]} ->.*Give --ref FILE"):
        predict.main(args)


def test_predict_takes_the_layouts_researchers_have(tmp_path, ckpt, capsys):
    """KADID-style names in one folder, PIPAL-style names in two, one reference for a folder, a pairs CSV: the same
    pairs score the same whichever way they are given."""
    rng = np.random.default_rng(0)
    kadid, pipal = tmp_path / "kadid", tmp_path / "pipal"
    for folder in (kadid, pipal / "dis", pipal / "ref"):
        folder.mkdir(parents=True)
    ref = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    dis = [np.clip(ref.astype(int) + rng.integers(-30 * k, 30 * k + 1, ref.shape), 0, 255).astype(np.uint8)
           for k in (1, 2)]
    write = lambda path, img: Image.fromarray(img).save(path)  # noqa: E731
    write(kadid / "I01.png", ref)
    write(pipal / "ref" / "A0001.bmp", ref)
    for k, img in enumerate(dis):
        write(kadid / f"I01_01_0{k + 1}.png", img)
        write(pipal / "dis" / f"A0001_00_0{k}.bmp", img)
    (tmp_path / "pairs.csv").write_text("dis,ref,mos\nkadid/I01_01_01.png,kadid/I01.png,4.1\n"
                                        "kadid/I01_01_02.png,kadid/I01.png,3.0\n")
    common = ["--ckpt", ckpt, "--crop_size", "32", "--n_ensemble", "5", *_weights()]
    runs = {"kadid one folder": ["--dis_dir", str(kadid), "--ref_dir", str(kadid)],
            "pipal two folders": ["--dis_dir", str(pipal / "dis"), "--ref_dir", str(pipal / "ref")],
            "one reference": ["--dis_dir", str(pipal / "dis"), "--ref", str(pipal / "ref" / "A0001.bmp")],
            "pairs file": ["--pairs", str(tmp_path / "pairs.csv")]}
    scores = {what: predict.main(args + common) for what, args in runs.items()}
    for what, got in scores.items():
        assert len(got) == 2, what  # the reference itself is not scored in the one-folder layout
        np.testing.assert_allclose(got, scores["pairs file"], rtol=1e-6, err_msg=what)
    assert scores["pairs file"][0] != scores["pairs file"][1]
    with pytest.raises(AHIQError, match=r"bad\.csv: no reference column in the header"):
        (tmp_path / "bad.csv").write_text("kadid/I01_01_01.png,kadid/I01.png\n")
        predict.main(["--pairs", str(tmp_path / "bad.csv"), *common])
    with pytest.raises(AHIQError, match="give one of: --pairs FILE; --dis FILE --ref FILE"):
        predict.main(["--dis", str(kadid / "I01_01_01.png"), "--ref_dir", str(kadid), *common])
    # the identical-images anchor: each image against itself, the same score as the pair (X, X) given by hand
    capsys.readouterr()
    anchor = predict.main(["--identical", "--ref_dir", str(kadid), *common])
    by_hand = [predict.main(["--dis", str(kadid / n), "--ref", str(kadid / n), *common])[0]
               for n in ("I01.png", "I01_01_01.png", "I01_01_02.png")]
    np.testing.assert_allclose(anchor, by_hand, rtol=1e-6)
    assert f"an image against itself: mean {np.mean(anchor):.4f}" in capsys.readouterr().out
    with pytest.raises(AHIQError, match="--identical scores images against themselves: give --ref FILE or"):
        predict.main(["--identical", "--dis_dir", str(kadid), "--ref_dir", str(kadid), *common])


def test_official_checkpoint_needs_a_mos_range(tmp_path, pipal_set, backbone_files, model_factory):
    heads = model_factory(8).trainable_state_dict()
    official = tmp_path / "official.pth"
    torch.save({"regressor_model_state_dict": heads["regressor"],
                "deform_net_model_state_dict": heads["deform_net"]}, official)
    name = pipal_set["names"][1]
    args = ["--dis", os.path.join(pipal_set["dis"], name), "--ref", os.path.join(pipal_set["ref"], "A0000.bmp"),
            "--ckpt", str(official), "--crop_size", "32", "--n_ensemble", "1", *_weights(backbone_files)]
    with pytest.raises(AHIQError, match=r"official\.pth: the checkpoint holds no training MOS range"):
        predict.main(args + ["--mos_scale"])
    plain = predict.main(args)
    scaled = predict.main(args + ["--mos_scale", "--mos_range", "10", "20"])
    assert scaled[0] == pytest.approx(10 + 10 * plain[0])
    with pytest.raises(AHIQError, match="give one of: --pairs FILE; --dis FILE --ref FILE"):
        predict.main(args[2:])


@needs_fixtures()
def test_predict_on_real_kadid_images_equals_test_py(ckpt, tmp_path, capsys):
    k = FIXTURES / "kadid10k"
    names = ["I01_01_05.png", "I01_15_05.png"]
    (tmp_path / "list.txt").write_text("".join(f"{n}\n" for n in names))
    tested = test_script.main(["--dataset", "kadid10k", "--list_format", "pipal", "--test_list",
                               str(tmp_path / "list.txt"), "--test_ref_path", str(k), "--test_dis_path", str(k),
                               "--ckpt", ckpt, "--crop_size", "64", "--n_ensemble", "12", "--checkpoints_dir",
                               str(tmp_path), "--name", "scored", *_weights()])
    expected = [float(line.split(",")[1]) for line in Path(tested["predictions"]).read_text().splitlines()]
    capsys.readouterr()
    for name, score in zip(names, expected):  # a real 512x384 photograph pair, 12 random windows of 64
        scores = predict.main(["--dis", str(k / name), "--ref", str(k / "I01.png"), "--ckpt", ckpt,
                               "--crop_size", "64", "--n_ensemble", "12", *_weights()])
        assert scores[0] == pytest.approx(score, rel=1e-6)
        assert name in capsys.readouterr().out
    assert expected[0] != pytest.approx(expected[1], rel=1e-6)
