"""The benchmark script runs end to end on tiny inputs and compares like with like (fp32 scores agree)."""
from __future__ import annotations

from benchmarks.benchmark import main


def test_benchmark_smoke(tmp_path):
    out = main(["--device", "cpu", "--images", "2", "--size", "40", "--crop", "32", "--n_ensemble", "3",
                "--repeats", "1", "--train_batch", "2", "--out", str(tmp_path / "bench.json")])
    assert out["test"]["fp32_max_rel_dev"] < 1e-4  # the fast path scores what the official-style baseline scores
    assert out["test"]["baseline_images_per_s"] > 0 and out["train"]["fp32_pairs_per_s"] > 0
    assert (tmp_path / "bench.json").is_file()
