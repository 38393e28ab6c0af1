"""The benchmark script runs end to end on tiny inputs and compares like with like (fp32 scores agree); the GPU
check refuses to run without CUDA."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.benchmark import main
from tests.conftest import run_entry

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    out = main(["--device", "cpu", "--images", "2", "--size", "40", "--crop", "32", "--n_ensemble", "2",
                "--repeats", "1", "--train_batch", "2", "--per_reference", "2", "--process", "2",
                "--out", str(tmp_path / "bench.json")])
    assert out["process"]["images"] == 2 and out["process"]["seconds"] > 0  # a whole test.py process ran
    assert out["test"]["fp32_max_rel_dev"] < 1e-4  # the fast path scores what the official-style baseline scores
    assert [r["per_reference"] for r in out["per_reference"]] == [2]
    assert all(r["max_rel_dev"] < 1e-4 and r["images"] == 2 for r in out["per_reference"])  # shared = baseline
    assert (tmp_path / "bench.json").is_file()


def test_the_onnx_section_scores_as_pytorch(tmp_path, tiny_factory):
    """--onnx's section on the tiny AHIQ (the paper's architecture is exported in tests/test_onnx.py): the same
    crop pairs through the export in ONNX Runtime give PyTorch's scores."""
    pytest.importorskip("onnxruntime")
    import argparse

    from benchmarks.benchmark import crops, onnx_speed, table
    images = torch.randint(0, 256, (2, 3, 40, 40), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    dis, ref = crops(images, 3, 32, 1919), crops(images.flip(-1), 3, 32, 1919)
    args = argparse.Namespace(crop=32, crops_per_forward=4, repeats=1)
    out = onnx_speed(args, tiny_factory(8), dis, ref, str(tmp_path))
    assert out["max_rel_dev"] < 1e-5 and out["onnx_images_per_s"] > 0 and out["bytes"] > 0
    assert "ONNX Runtime vs PyTorch" in table({"device": "cpu", "onnx": out})  # the row the README's table shows


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_gpu_check_without_cuda_says_so_in_one_line(capsys):
    proc = run_entry(capsys, "-m benchmarks.gpu_check")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
                                                "run it on a GPU machine"]
