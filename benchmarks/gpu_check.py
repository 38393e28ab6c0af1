"""Everything that only a GPU can check, in one run (about 5-8 minutes on one H100/H200-class card).

1. agreement: CUDA fp32 (TF32 off) against the CPU on the same crops (max relative deviation, goal < 1e-4); bf16 and
   fp16 autocast against CUDA fp32 on 64 synthetic 288x288 pairs with 5 windows (max abs. deviation, SRCC);
   the batched-GEMM deformable convolution against torchvision's CUDA kernel.
2. train: ``train.py`` on CUDA for a few steps with ``--amp --amp_dtype bf16`` and ``fp16``; an fp16 run stopped by
   SIGTERM mid-epoch, then ``--resume``d to the end (its last.pth must hold the GradScaler state).
3. test: ``test.py`` on CUDA with the fp16 run's checkpoint, writing the NTIRE package (output.txt, readme.txt, zip).
4. benchmark: ``benchmarks.benchmark`` (20-crop ensemble on 288x288, baseline vs project, fp32 and bf16; shared
   references at 1, 4 and 25 distorted images per reference).

Backbones are random (``--no_pretrained``; the GPU machine has no hub access): this checks computation, not accuracy.
Each check runs even when an earlier one failed; a one-screen summary is printed and everything is written as JSON
(``--out``, default results/gpu_check.json). Without CUDA it says so in one line and exits with 2.
``--allow_cpu --quick`` runs the same script on the CPU at toy sizes, to test the script itself.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable

import numpy as np
import torch
from scipy import stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(args: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def make_data(folder: str, size: int) -> str:
    data = os.path.join(folder, "data")
    proc = run_py(["-m", "tools.make_synthetic", "--out", data, "--n_refs", "4", "--size", str(size),
                   "--split", "2", "1", "1"], 300)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return data


def check_agreement(cfg: argparse.Namespace, data: str) -> dict:
    from torchvision.ops import deform_conv2d

    from data.datasets import pair_dataset, read_labels
    from engine import score_crops
    from models import build_model
    from models.deform import deform_conv2d_gemm

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    labels = read_labels(os.path.join(data, "train.txt"))
    for part in ("val.txt", "test.txt"):
        more = read_labels(os.path.join(data, part))
        labels.names += more.names
        labels.refs += more.refs
    labels.raw = None
    dataset = pair_dataset(os.path.join(data, "ref"), os.path.join(data, "dis"), labels, crop_size=cfg.crop,
                           n_crops=5)
    items = [dataset[i] for i in range(len(dataset))]
    dis, ref = torch.stack([it["dis"] for it in items]), torch.stack([it["ref"] for it in items])
    torch.manual_seed(0)
    model = build_model(8, pretrained=False).eval()
    n_cpu = min(4, len(items))
    cpu = score_crops(model, dis[:n_cpu], ref[:n_cpu], 20).scores
    model.to(cfg.device)
    fp32 = score_crops(model, dis, ref, 50).scores.cpu()
    out = {"images": len(items), "crops": 5, "cuda_fp32_vs_cpu_max_rel_dev":
           float(((fp32[:n_cpu] - cpu).abs() / cpu.abs()).max())}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        amp = score_crops(model, dis, ref, 50, dtype).scores.cpu()
        out[f"{name}_max_abs_dev"] = float((amp - fp32).abs().max())
        out[f"{name}_srcc_vs_fp32"] = float(stats.spearmanr(amp.numpy(), fp32.numpy())[0])
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 768, cfg.crop // 4, cfg.crop // 4, generator=g).to(cfg.device)
    offset = (torch.randn(4, 18, cfg.crop // 4, cfg.crop // 4, generator=g) * 3).to(cfg.device)
    weight = (torch.randn(768, 768, 3, 3, generator=g) * 0.01).to(cfg.device)
    bias = torch.randn(768, generator=g).to(cfg.device)
    ours = deform_conv2d_gemm(x, offset, weight, bias, padding=1)
    theirs = deform_conv2d(x, offset, weight, bias, padding=(1, 1))
    out["deform_gemm_vs_torchvision_max_abs_dev"] = float((ours - theirs).abs().max())
    # bf16/fp16 are reported, not judged: with random backbones the scores spread little, so their SRCC is no
    # measure of what the released weights give
    out["ok"] = bool(out["cuda_fp32_vs_cpu_max_rel_dev"] < 1e-4
                     and out["deform_gemm_vs_torchvision_max_abs_dev"] < 1e-3)
    return out


def train_args(cfg: argparse.Namespace, data: str, ckpts: str, name: str, *extra: str) -> list[str]:
    return ["train.py", "--train_ref_path", f"{data}/ref", "--train_dis_path", f"{data}/dis", "--train_list",
            f"{data}/train.txt", "--val_ref_path", f"{data}/ref", "--val_dis_path", f"{data}/dis", "--val_list",
            f"{data}/val.txt", "--checkpoints_dir", ckpts, "--name", name, "--no_pretrained", "--crop_size",
            str(cfg.crop), "--gpu_ids", cfg.gpu_ids, "--num_workers", "2", "--num_avg_val", "1", *extra]


def sigterm_then_resume(cfg: argparse.Namespace, data: str, ckpts: str) -> dict:
    args = train_args(cfg, data, ckpts, "fp16_resume", "--amp", "--amp_dtype", "fp16", "--n_epoch", "1")
    log = os.path.join(ckpts, "fp16_resume.stderr")
    os.makedirs(ckpts, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=f, stderr=f)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        with open(log) as f:
            if "loss=" in f.read():
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=180)
    with open(log) as f:
        stopped = f.read()
    state = torch.load(os.path.join(ckpts, "fp16_resume", "last.pth"), weights_only=True)
    resumed = run_py(args + ["--resume"], 300)
    final = torch.load(os.path.join(ckpts, "fp16_resume", "last.pth"), weights_only=True)
    out = {"stop_exit_code": code, "stopped_at_step": state["train_state"]["step"],
           "scaler_saved": bool(state.get("scaler_state_dict")), "resume_exit_code": resumed.returncode,
           "final_epoch": final["train_state"]["epoch"], "loss_scale": (final.get("scaler_state_dict") or {}).get(
               "scale")}
    fp16_used = cfg.device == "cuda"  # on the CPU --amp falls back to fp32: no loss scale to save
    out["ok"] = code == 3 and out["scaler_saved"] == fp16_used and resumed.returncode == 0 and out["final_epoch"] == 1
    if not out["ok"]:
        out["log"] = (stopped + resumed.stderr)[-1500:]
    return out


def check_train(cfg: argparse.Namespace, data: str, folder: str) -> dict:
    ckpts = os.path.join(folder, "ckpts")
    out: dict = {}
    for dtype in ("bf16", "fp16"):
        start = time.perf_counter()
        proc = run_py(train_args(cfg, data, ckpts, f"amp_{dtype}", "--amp", "--amp_dtype", dtype, "--n_epoch", "1"),
                      300)
        ckpt = os.path.join(ckpts, f"amp_{dtype}", "last.pth")
        loss = float(torch.load(ckpt, weights_only=True)["loss"]) if os.path.isfile(ckpt) else None
        out[dtype] = {"exit_code": proc.returncode, "seconds": time.perf_counter() - start, "loss": loss}
        if proc.returncode:
            out[dtype]["log"] = proc.stderr[-1500:]
    out["sigterm_resume"] = sigterm_then_resume(cfg, data, ckpts)
    out["ok"] = all(out[d]["exit_code"] == 0 and np.isfinite(out[d]["loss"] or np.nan) for d in ("bf16", "fp16")) \
        and out["sigterm_resume"]["ok"]
    return out


def check_test(cfg: argparse.Namespace, data: str, folder: str) -> dict:
    ckpts, package = os.path.join(folder, "ckpts"), os.path.join(folder, "submission")
    proc = run_py(["test.py", "--test_ref_path", f"{data}/ref", "--test_dis_path", f"{data}/dis", "--test_list",
                   f"{data}/test.txt", "--checkpoints_dir", ckpts, "--name", "fp16_resume", "--no_pretrained",
                   "--crop_size", str(cfg.crop), "--gpu_ids", cfg.gpu_ids, "--n_ensemble", "20", "--amp",
                   "--submission", package], 300)
    zip_path = os.path.join(package, "submission.zip")
    names = sorted(zipfile.ZipFile(zip_path).namelist()) if os.path.isfile(zip_path) else []
    out = {"exit_code": proc.returncode, "zip_members": names}
    if os.path.isfile(os.path.join(package, "readme.txt")):
        with open(os.path.join(package, "readme.txt")) as f:
            out["readme_runtime"] = f.readline().strip()
    out["ok"] = proc.returncode == 0 and names == ["output.txt", "readme.txt"]
    if not out["ok"]:
        out["log"] = proc.stderr[-1500:]
    return out


def check_benchmark(cfg: argparse.Namespace) -> dict:
    from benchmarks.benchmark import main as benchmark
    args = ["--device", cfg.device, "--images", "50", "--n_ensemble", "20", "--repeats", "3", "--per_reference", "1",
            "4", "25"]
    if cfg.quick:
        args = ["--device", cfg.device, "--images", "2", "--size", str(cfg.size), "--crop", str(cfg.crop),
                "--n_ensemble", "3", "--repeats", "1", "--train_batch", "2"]
    out = benchmark(args)
    out["ok"] = out["test"]["fp32_max_rel_dev"] < 1e-4
    return out


def summary(results: dict) -> str:
    lines = [f"GPU check on {results['device']} (torch {results['torch']}, CUDA {results['cuda']}), "
             f"{results['seconds']:.0f} s"]
    for name, res in results["checks"].items():
        status = "ok" if res.get("ok") else "FAILED"
        lines.append(f"  {name:<10} {status}  ({res.get('seconds', 0):.0f} s)")
    a = results["checks"].get("agreement", {})
    if "bf16_srcc_vs_fp32" in a:
        lines.append(f"  fp32 vs CPU max rel. dev {a['cuda_fp32_vs_cpu_max_rel_dev']:.1e}; bf16 max abs. dev "
                     f"{a['bf16_max_abs_dev']:.1e}, SRCC {a['bf16_srcc_vs_fp32']:.5f}; fp16 max abs. dev "
                     f"{a['fp16_max_abs_dev']:.1e}, SRCC {a['fp16_srcc_vs_fp32']:.5f} ({a['images']} images)")
    b = results["checks"].get("benchmark", {})
    if "test" in b:
        t, tr = b["test"], b["train"]
        lines.append(f"  test images/s: baseline {t['baseline_images_per_s']:.3g}, fp32 {t['fp32_images_per_s']:.3g}"
                     f", bf16 {t.get('bf16_images_per_s', float('nan')):.3g}; train pairs/s (batch {tr['batch']}): "
                     f"baseline {tr['baseline_pairs_per_s']:.3g}, fp32 {tr['fp32_pairs_per_s']:.3g}")
    for name, res in results["checks"].items():
        if "error" in res:
            lines.append(f"  {name}: {res['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(REPO, "results", "gpu_check.json"))
    p.add_argument("--only", nargs="*", default=["agreement", "train", "test", "benchmark"])
    p.add_argument("--allow_cpu", action="store_true", help="run on the CPU (to test this script)")
    p.add_argument("--quick", action="store_true", help="toy sizes (to test this script)")
    cfg = p.parse_args(argv)
    if not torch.cuda.is_available() and not cfg.allow_cpu:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine",
              file=sys.stderr)
        return 2
    cfg.device, cfg.gpu_ids = ("cuda", "0") if torch.cuda.is_available() else ("cpu", "-1")
    cfg.size, cfg.crop = (40, 32) if cfg.quick else (288, 224)
    started = time.perf_counter()
    results = {"device": torch.cuda.get_device_name() if cfg.device == "cuda" else "cpu", "torch": torch.__version__,
               "cuda": torch.version.cuda, "checks": {}}
    with tempfile.TemporaryDirectory() as folder:
        data = make_data(folder, cfg.size)
        checks: dict[str, Callable[[], dict]] = {
            "agreement": lambda: check_agreement(cfg, data), "train": lambda: check_train(cfg, data, folder),
            "test": lambda: check_test(cfg, data, folder), "benchmark": lambda: check_benchmark(cfg)}
        for name in cfg.only:
            start = time.perf_counter()
            try:
                res = checks[name]()
            except Exception as err:  # one failed check must not hide the others' numbers
                res = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            res["seconds"] = time.perf_counter() - start
            results["checks"][name] = res
    results["seconds"] = time.perf_counter() - started
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    with open(cfg.out, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(summary(results))
    print(f"written: {cfg.out}")
    return 0 if all(r.get("ok") for r in results["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
