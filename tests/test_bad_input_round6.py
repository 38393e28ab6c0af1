"""Bad inputs, round 6 (what had no test): ONNX files that are corrupt, of another model, or a checkpoint under an
.onnx name; backbone records of a checkpoint edited or deleted; a damaged image inside a list scored by two
torchrun processes; a full disk while progress or a mapping is written. Each ends in one line naming the file."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import predict
from data.label_norm import LabelNorm
from data.score_mapping import Mapping
from engine.jobs import Progress
from engine.scorer import load_scorer
from tests.conftest import make_pipal_set
from tests.forks import run_ranks
from utils.distributed import DistInfo
from utils.errors import AHIQError

REPO = Path(__file__).resolve().parents[1]


def _predict_onnx(path: Path, data: dict) -> list[str]:
    return ["--dis", f"{data['dis']}/{data['names'][0]}", "--ref", f"{data['ref']}/A0000.bmp", "--backend",
            "onnxruntime", "--ckpt", str(path), "--crop_size", "32", "--n_ensemble", "1"]


def test_onnx_files_that_are_not_an_ahiq_export_are_one_line(tmp_path, tiny_ckpt):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is an optional extra (requirements-onnx.txt)")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    data = make_pipal_set(tmp_path / "set", n_refs=1, n_dis=1, size=(40, 40), seed=1)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(os.urandom(4096))
    with pytest.raises(AHIQError, match=r"corrupt\.onnx: cannot be read as an ONNX model"):
        predict.main(_predict_onnx(corrupt, data))
    checkpoint = tmp_path / "model.onnx"  # a .pth under an .onnx name
    shutil.copy(tiny_ckpt, checkpoint)
    with pytest.raises(AHIQError, match=r"model\.onnx: cannot be read as an ONNX model"):
        predict.main(_predict_onnx(checkpoint, data))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    other = tmp_path / "other.onnx"  # a valid ONNX model of something else
    onnx.save(helper.make_model(graph), str(other))
    with pytest.raises(AHIQError, match=r"other\.onnx: not an AHIQ export"):
        predict.main(_predict_onnx(other, data))


def test_backbone_records_edited_or_deleted(tmp_path, tiny_ckpt, caplog):
    """An edited digest is another model's record (refused, both named); a deleted record cannot be checked, and
    says so in one line; a record that is not AHIQ's is refused."""
    settings = dict(pretrained=False, crop_size=32, n_ensemble=1)
    ckpt = torch.load(tiny_ckpt, weights_only=False)
    edited = json.loads(json.dumps(ckpt["ahiq"]["backbones"]))
    edited["vit"]["digest"] = "0" * 16
    path = tmp_path / "edited.pth"
    torch.save({**ckpt, "ahiq": {**ckpt["ahiq"], "backbones": edited}}, path)
    with pytest.raises(AHIQError, match=r"edited\.pth: trained on the vit backbone .*digest 0{16}, but this run built "
                                        r".*--allow_other_backbones"):
        load_scorer(str(path), str(tmp_path), **settings)
    path = tmp_path / "deleted.pth"
    torch.save({**ckpt, "ahiq": {k: v for k, v in ckpt["ahiq"].items() if k != "backbones"} | {"epochs_trained": 1}},
               path)
    with caplog.at_level(logging.WARNING, logger="ahiq.models"):
        load_scorer(str(path), str(tmp_path), **settings)
    assert "deleted.pth: records no backbones" in caplog.text
    path = tmp_path / "junk.pth"
    torch.save({**ckpt, "ahiq": {**ckpt["ahiq"], "backbones": ["vit"]}}, path)
    with pytest.raises(AHIQError, match=r"junk\.pth: its metadata 'backbones' is not what AHIQ writes"):
        load_scorer(str(path), str(tmp_path), **settings)


@pytest.mark.slow
def test_a_damaged_image_in_a_list_scored_by_two_processes_is_one_line(tmp_path, tiny_ckpt):
    """Two ranks of one job: a truncated image of the list is named in one line, before any scoring, and
    the job ends (no rank left waiting in a collective)."""
    data = make_pipal_set(tmp_path / "set", n_refs=2, n_dis=3, size=(40, 40), seed=2)
    damaged = Path(data["dis"]) / data["names"][4]
    damaged.write_bytes(damaged.read_bytes()[:100])
    log = tmp_path / "job.log"  # two ranks of one job, as torchrun starts them (tests/forks.py)
    code = run_ranks("test", ["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list",
                              data["list"], "--ckpt", tiny_ckpt, "--crop_size", "32", "--no_pretrained", "--gpu_ids",
                              "-1", "--num_workers", "0", "--checkpoints_dir", str(tmp_path), "--name", "run",
                              "--n_ensemble", "2"], log, timeout=120)  # each rank ends by itself
    text = log.read_text()
    assert code != 0
    errors = sorted(re.findall(r"error: [^\n]*", text))  # a progress bar may stand before one on its line
    assert len(errors) == 2, text[-3000:]  # one line per process: the cause, and the other one stopping
    assert f"{data['names'][4]}: cannot be decoded as an image" in errors[0], errors
    assert "another process of this job failed (its error is printed above)" in errors[1], errors
    assert "Traceback" not in text, text[-3000:]  # no rank's traceback
    assert not (tmp_path / "run" / "results.txt").exists()


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (root only: skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> None:
    try:
        with open(disk / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 1024)
                f.flush()
    except OSError:  # full
        pass


def test_a_full_disk_while_progress_or_a_mapping_is_written(full_disk):
    progress = Progress(str(full_disk / "results.txt"), {"what": "test"}, DistInfo(), False, False, n=100000)
    progress.record([0], [0.5])
    _fill(full_disk)
    with pytest.raises(AHIQError, match=r"rank0-pid\d+\.txt: cannot be written \(the disk is full\)"):
        for i in range(1, 100000):  # the page cache takes a little before the disk is found full
            progress.record([i], [0.5])
    assert progress.recorded()[0] == 0.5  # what was recorded before is kept
    mapping = Mapping((1.0, 0.0, 0.5, 0.1), LabelNorm(0.0, 100.0, False), "list.txt", 10, None)
    with pytest.raises(AHIQError, match=r"scale\.json: cannot be written \(the disk is full\); nothing was replaced"):
        mapping.save(str(full_disk / "scale.json"))
    assert sorted(p.name for p in full_disk.iterdir()) == [".results.txt.progress", "filler"]  # no temporary left
    np.testing.assert_array_equal(mapping(np.array([0.5])), [50.0])


def test_a_full_disk_while_test_py_writes_its_figures_and_report(full_disk, tmp_path, tiny_ckpt):
    """The results come first (small); the figures and the report then meet the full disk: one line naming the file,
    the results intact, no temporary left."""
    import test as test_entry
    data = make_pipal_set(tmp_path / "set", n_refs=2, n_dis=3, size=(40, 40), seed=3)
    args = ["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list", data["list"], "--ckpt",
            tiny_ckpt, "--crop_size", "32", "--no_pretrained", "--gpu_ids", "-1", "--num_workers", "0",
            "--n_ensemble", "1", "--checkpoints_dir", str(full_disk), "--name", "run", "--bootstrap", "0", "--report"]
    with pytest.raises(AHIQError, match=r"run/results_\w+\.(png|html|json): cannot be written \(the disk is full\)"):
        test_entry.main(args)
    results = (full_disk / "run" / "results.txt").read_text().splitlines()
    assert [line.split(",")[0] for line in results] == data["names"]
    from utils.files import TMP_PREFIX
    assert not [p.name for p in (full_disk / "run").iterdir() if p.name.startswith(TMP_PREFIX)]
