"""benchmarks/gpu_check.py tested on the CPU: its precision check passes a correct bf16 path and fails a wrong one
(a sampling grid in bf16, a score pooled in bf16), and a run keeps its numbers, kills its children and removes its
folder at the deadline."""
from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from benchmarks import gpu_check
from models import deform
from models.ahiq import PixelPrediction

QUICK = argparse.Namespace(device="cpu", gpu_ids="-1", quick=True, size=40, crop=32)


@pytest.fixture(scope="module")
def model():
    from models import build_model
    torch.manual_seed(0)
    return build_model(8, pretrained=False).eval()


@pytest.mark.slow  # the real architecture at a 224 crop's deformable map
def test_the_precision_check_passes_a_correct_bf16_path(model):
    out = gpu_check.check_agreement(QUICK, model)
    assert out["ok"] and out["cpu_max_rel_dev"] <= gpu_check.BOUNDS["cpu"]
    assert out["bf16"]["ok"] and 0 < out["bf16"]["maps_f_rel_l2"] and out["bf16"]["pool_rel_err"] < 1e-6


@pytest.mark.slow  # the real architecture at a 224 crop's deformable map
def test_the_precision_check_fails_a_sampling_grid_in_bf16(model, monkeypatch):
    monkeypatch.setattr(deform, "GRID_DTYPE", torch.bfloat16)
    out = gpu_check.check_agreement(QUICK, model)
    assert not out["ok"] and not out["deform"]["ok"]
    assert out["deform"]["deform_bf16_rel_l2"] > gpu_check.BOUNDS["deform_bf16"]


@pytest.mark.slow  # the real architecture at a 224 crop's deformable map
def test_the_precision_check_fails_a_score_pooled_in_bf16(model, monkeypatch):
    pool = PixelPrediction.pool
    monkeypatch.setattr(PixelPrediction, "pool", staticmethod(
        lambda f, w: pool(f.bfloat16(), None if w is None else w.bfloat16()).float()))
    out = gpu_check.check_agreement(QUICK, model)
    assert not out["ok"] and out["bf16"]["pool_rel_err"] > gpu_check.BOUNDS["pool"]


def _own_processes(folder: str) -> list[int]:
    """Live processes whose command line names ``folder`` (the run's children)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if folder.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the run's processes in /proc (Linux)")
def test_at_the_deadline_a_run_keeps_its_numbers_kills_its_children_and_removes_its_folder(tmp_path, capsys):
    leftover = os.path.join(gpu_check.WORK, "999999999")  # a folder a killed run left (no such process)
    os.makedirs(leftover, exist_ok=True)
    out = tmp_path / "gc.json"
    code = gpu_check.main(["--allow_cpu", "--quick", "--only", "deform", "train", "test", "--deadline", "20",
                           "--out", str(out)])
    folder = os.path.join(gpu_check.WORK, str(os.getpid()))
    results = json.loads(out.read_text())
    assert code == 1 and list(results["checks"]) == ["deform", "train", "test"]
    deform = results["checks"]["deform"]  # ~10 s on an idle machine; on a loaded one it may be cut too
    assert (deform["ok"] and deform["gemm_fp32"]["forward_ms"] > 0) or deform.get("timed_out"), deform
    assert results["checks"]["train"]["timed_out"] and results["checks"]["test"]["timed_out"]
    assert not os.path.exists(folder) and not os.path.exists(leftover) and not _own_processes(folder)
    lines = capsys.readouterr().out.splitlines()
    assert any(x.strip().startswith("train") and "TIMED OUT" in x for x in lines), lines
