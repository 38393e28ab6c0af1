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
    code = gpu_check.main(["--allow_cpu", "--quick", "--only", "train", "test", "--deadline", "6",
                           "--out", str(out)])
    folder = os.path.join(gpu_check.WORK, str(os.getpid()))
    results = json.loads(out.read_text())
    assert code == 1 and list(results["checks"]) == ["train", "test"]  # training alone takes far longer than 6 s
    assert results["checks"]["train"]["timed_out"] and results["checks"]["test"]["timed_out"]
    assert not os.path.exists(folder) and not os.path.exists(leftover) and not _own_processes(folder)
    lines = capsys.readouterr().out.splitlines()
    assert any(x.strip().startswith("train") and "TIMED OUT" in x for x in lines), lines
    # the compiled paths are measured with the time the others leave: cut, they are reported, not failed
    code = gpu_check.main(["--allow_cpu", "--quick", "--only", "compiled", "--deadline", "1", "--out", str(out)])
    assert code == 0 and json.loads(out.read_text())["checks"]["compiled"]["timed_out"]


def test_a_benchmark_cut_by_the_deadline_keeps_the_sections_it_finished(tmp_path, monkeypatch, capsys):
    """The benchmark runs first and hands each section to the JSON as it ends: cut by the deadline in its second
    section (here: the deadline made to pass there), the first section's throughput is in the file; the goals are
    printed beside what was measured (not judged on the CPU)."""
    from benchmarks import benchmark

    def cut(*args, **kwargs):
        raise gpu_check.Deadline("stopped at the deadline")

    monkeypatch.setattr(benchmark, "per_reference", cut)
    out = tmp_path / "gc.json"
    code = gpu_check.main(["--allow_cpu", "--quick", "--only", "benchmark", "--out", str(out)])
    bench = json.loads(out.read_text())["checks"]["benchmark"]
    assert code == 1 and bench["timed_out"] and not bench["ok"] and "partial" not in bench
    assert bench["test"]["fp32_images_per_s"] > 0 and bench["test"]["baseline_images_per_s"] > 0
    goals = json.loads(out.read_text())["checks"]["goals"]
    assert goals["images_per_s_goal"] == 150 and goals["train_hours_goal"] == 3 and goals["note"]
    shown = capsys.readouterr().out
    assert "goals" in shown and "(goal >= 150 images/s: MISSED)" in shown


def test_the_goals_are_judged_on_a_gpu_from_the_benchmarks_bf16_numbers():
    """150 test.py images/s and 200 PIPAL epochs in 3 h, from bf16 numbers; a goal missed or unmeasured fails."""
    def results(rate, hours):
        return {"device": "NVIDIA H100", "checks": {"benchmark": {"process": {"bf16_scoring_images_per_s": rate},
                                                                  "train": {"pipal_200_epochs_steps_hours": hours}}}}
    assert gpu_check.judge_goals(results(160.0, 2.5))["ok"]
    missed = gpu_check.judge_goals(results(105.0, 2.5))
    assert not missed["ok"] and not missed["images_per_s_met"] and missed["train_hours_met"]
    assert not gpu_check.judge_goals(results(160.0, 3.2))["ok"]
    assert not gpu_check.judge_goals(results(None, 2.5))["ok"]


def test_gpu_check_sh_installs_nothing_and_names_what_is_missing(tmp_path):
    """A machine whose python3 lacks modules (and no virtualenv): one line naming them, exit 2, no pip run; with a
    virtualenv that has them, the check itself runs (here: no CUDA, its own one line)."""
    import subprocess
    import sys
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\n[ "$2" = "import torch" ] && exit 0\nexit 1\n')
    (fake / "pip").write_text(f'#!/bin/sh\ntouch {tmp_path}/pip_ran\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["sh", "benchmarks/gpu_check.sh"], cwd=gpu_check.REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "python3 lacks: torchvision timm cv2 scipy safetensors tqdm" in done.stderr
    assert not (tmp_path / "pip_ran").exists()
    done = subprocess.run(["sh", "benchmarks/gpu_check.sh", "--out", str(tmp_path / "gc.json")], cwd=gpu_check.REPO,
                          env={**env, "VIRTUAL_ENV": sys.prefix}, capture_output=True, text=True, timeout=120)
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the check would run")
    assert done.returncode == 2 and "no CUDA device here" in done.stderr, done.stderr
