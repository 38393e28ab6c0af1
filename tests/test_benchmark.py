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
    out = main(["--device", "cpu", "--images", "2", "--size", "40", "--crop", "32", "--n_ensemble", "3",
                "--repeats", "1", "--train_batch", "2", "--per_reference", "1", "2", "--process", "2", "--onnx",
                "--out", str(tmp_path / "bench.json")])
    assert out["process"]["images"] == 2 and out["process"]["seconds"] > 0  # a whole test.py process ran
    assert out["onnx"]["max_rel_dev"] < 1e-5 and out["onnx"]["onnx_images_per_s"] > 0  # the same scores
    assert out["test"]["fp32_max_rel_dev"] < 1e-4  # the fast path scores what the official-style baseline scores
    assert [r["per_reference"] for r in out["per_reference"]] == [1, 2]
    assert all(r["max_rel_dev"] < 1e-4 and r["images"] == 2 for r in out["per_reference"])  # shared = baseline
    assert (tmp_path / "bench.json").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_gpu_check_without_cuda_says_so_in_one_line(capsys):
    proc = run_entry(capsys, "-m benchmarks.gpu_check")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
                                                "run it on a GPU machine"]
