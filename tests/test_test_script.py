"""test.py end to end on a tiny PIPAL-style set: fidelity to the official computation, complete ordered results,
metrics, the NTIRE submission package, order-independent random ensembles, and one-line errors for bad input."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import test as test_script
from benchmarks.official_style import OfficialStyleBackbones, official_five_point_window, reference_scores
from data.pipal import read_list
from tests.conftest import FIXTURES, run_entry
from utils.metrics import iqa_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def official_ckpt(tmp_path, model_factory) -> tuple[str, dict]:
    """An official-format checkpoint with a seeded random head, as the official train.py writes it."""
    g = torch.Generator().manual_seed(11)
    heads = {part: {k: v + torch.randn(v.shape, generator=g) * 0.02 for k, v in sd.items()}
             for part, sd in model_factory(8).trainable_state_dict().items()}
    path = tmp_path / "epoch_7.pth"
    torch.save({"regressor_model_state_dict": heads["regressor"], "deform_net_model_state_dict": heads["deform_net"],
                "epoch": 7, "loss": np.float64(0.02)}, path)
    return str(path), heads


def _args(pipal_set, tmp_path, backbone_files, ckpt, *extra) -> list[str]:
    return ["--test_ref_path", pipal_set["ref"], "--test_dis_path", pipal_set["dis"], "--test_list", pipal_set["list"],
            "--ckpt", ckpt, "--vit_weights", backbone_files[8], "--resnet_weights", backbone_files["resnet"],
            "--checkpoints_dir", str(tmp_path / "ckpts"), "--name", "run", "--crop_size", "32", "--gpu_ids", "-1",
            "--num_workers", "0", *extra]


def _tiny_args(pipal_set, tmp_path, ckpt, *extra) -> list[str]:
    """test.py on the tiny AHIQ (its backbones named in the checkpoint, random): for what does not need the real
    sizes."""
    return ["--test_ref_path", pipal_set["ref"], "--test_dis_path", pipal_set["dis"], "--test_list", pipal_set["list"],
            "--ckpt", ckpt, "--no_pretrained", "--checkpoints_dir", str(tmp_path / "ckpts"), "--name", "run",
            "--crop_size", "32", "--gpu_ids", "-1", "--num_workers", "0", *extra]


def _read_results(path) -> tuple[list[str], np.ndarray]:
    lines = Path(path).read_text().splitlines()
    return [ln.split(",")[0] for ln in lines], np.array([float(ln.split(",")[1]) for ln in lines])


@pytest.mark.slow
def test_scores_equal_the_official_computation(tmp_path, pipal_set, backbone_files, official_ckpt):
    ckpt, heads = official_ckpt
    result = test_script.main(_args(pipal_set, tmp_path, backbone_files, ckpt, "--n_ensemble", "5",
                                    "--batch_size", "4"))
    names, scores = _read_results(result["predictions"])
    assert names == pipal_set["names"]  # every listed image, the incomplete last batch included, in list order
    backbones = OfficialStyleBackbones(8, backbone_files[8], backbone_files["resnet"])
    dis, ref = (torch.stack([torch.from_numpy(cv2.cvtColor(cv2.imread(str(Path(folder) / n)), cv2.COLOR_BGR2RGB)
                                              .astype(np.float32).transpose(2, 0, 1) / 255) for n in files])
                for folder, files in ((pipal_set["dis"], names), (pipal_set["ref"], [n[:5] + ".bmp" for n in names])))
    total = torch.zeros(len(names), 1)
    for idx in range(5):  # the official test loop: per crop index, the images in one batch (all of one size here)
        t, left = official_five_point_window(idx, dis.shape[2], dis.shape[3], 32)
        crop = (slice(None), slice(None), slice(t, t + 32), slice(left, left + 32))
        total += reference_scores(backbones, heads["deform_net"], heads["regressor"], dis[crop], ref[crop])
    np.testing.assert_allclose(scores, (total / 5).flatten().numpy(), rtol=1e-4)
    assert np.ptp(scores) > 1e-4  # the images really score differently

    metrics = json.loads(Path(result["predictions"]).with_name("results_metrics.json").read_text())
    _, raw = read_list(pipal_set["list"])
    label = (raw - raw.min()) / (raw.max() - raw.min())
    for key, value in iqa_metrics(scores, label).items():
        assert metrics[key] == pytest.approx(value, abs=1e-6)
    assert metrics["n_images"] == 6
    png = Path(result["predictions"]).with_name("results_scatter.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert (tmp_path / "ckpts" / "run" / "opt_test.txt").is_file()


def test_random_ensemble_independent_of_batching_and_workers(tmp_path, pipal_set, tiny_ckpt):
    ckpt = tiny_ckpt
    a = test_script.main(_tiny_args(pipal_set, tmp_path, ckpt, "--n_ensemble", "12", "--batch_size", "1",
                               "--test_file_name", "a.txt", "--crops_per_forward", "5"))
    b = test_script.main(_tiny_args(pipal_set, tmp_path, ckpt, "--n_ensemble", "12", "--batch_size", "4",
                               "--test_file_name", "b.txt") + ["--num_workers", "2"])
    names_a, scores_a = _read_results(a["predictions"])
    names_b, scores_b = _read_results(b["predictions"])
    assert names_a == names_b
    np.testing.assert_allclose(scores_a, scores_b, rtol=1e-5)  # (the seed's effect on windows: test_data.py)


def test_names_only_list_and_submission_package(tmp_path, pipal_set, tiny_ckpt):
    names_only = tmp_path / "names.txt"
    names_only.write_text("\n".join(pipal_set["names"]))
    pipal_set = {**pipal_set, "list": str(names_only)}
    sub = tmp_path / "submission"
    result = test_script.main(_tiny_args(pipal_set, tmp_path, tiny_ckpt, "--n_ensemble", "1",
                                    "--submission", str(sub)))
    assert "srcc" not in result and not Path(result["predictions"]).with_name("results_metrics.json").exists()
    assert not Path(result["predictions"]).with_name("results_scatter.png").exists()
    with zipfile.ZipFile(sub / "submission.zip") as zf:
        assert sorted(zf.namelist()) == ["output.txt", "readme.txt"]
        output = zf.read("output.txt").decode()
        readme = zf.read("readme.txt").decode()
    assert output == Path(result["predictions"]).read_text() == (sub / "output.txt").read_text()
    assert [ln.split(",")[0] for ln in output.splitlines()] == pipal_set["names"]
    fields = dict(line.split(" : ", 1) for line in readme.splitlines())
    assert float(fields["runtime per image [s]"]) > 0 and fields["CPU[1] / GPU[0]"] == "1"
    assert fields["Full-Reference [1] / Non-Reference [0]"] == "1"
    if FIXTURES.is_dir():
        example = (FIXTURES / "pipal" / "ntire22_submission_readme_example.txt").read_text().splitlines()
        assert list(fields) == [line.split(" : ", 1)[0] for line in example if line.strip()]


def _assert_one_line_error(proc, *fragments) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0]


def test_cli_errors_are_one_line_without_traceback(tmp_path, pipal_set, tiny_ckpt, capsys):
    base = _tiny_args(pipal_set, tmp_path, tiny_ckpt)
    missing_list = [a if a != pipal_set["list"] else str(tmp_path / "nolist.txt") for a in base]
    _assert_one_line_error(run_entry(capsys, "test.py", *missing_list), "nolist.txt", "label file not found")
    torch.save({"something": torch.zeros(2)}, tmp_path / "not_ahiq.pth")
    bad_ckpt = [a if a != tiny_ckpt else str(tmp_path / "not_ahiq.pth") for a in base]
    _assert_one_line_error(run_entry(capsys, "test.py", *bad_ckpt), "not_ahiq.pth", "not an AHIQ checkpoint")
    damaged = Path(pipal_set["dis"]) / "A0001_00_01.bmp"
    damaged.write_bytes(damaged.read_bytes()[:200])  # header fine, pixels gone: found while decoding in a worker
    _assert_one_line_error(run_entry(capsys, "test.py", *base, "--num_workers", "2", "--n_ensemble", "1"),
                           "A0001_00_01.bmp", "cannot be decoded")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without CUDA")
def test_cli_gpu_request_without_cuda(tmp_path, pipal_set, tiny_ckpt, capsys):
    args = _tiny_args(pipal_set, tmp_path, tiny_ckpt)
    args[args.index("--gpu_ids") + 1] = "0"
    _assert_one_line_error(run_entry(capsys, "test.py", *args), "--gpu_ids 0", "--gpu_ids -1")
