"""Everything only a GPU can check, in one run (goal: under 6 minutes on one H100/H200, start-up included), with
the machine's own python3 (PyTorch, timm, OpenCV, SciPy; nothing is installed). Every check judges numbers:

1. agreement: strict fp32 on CUDA (TF32 off) against the CPU (max relative score deviation <= 1e-4); TF32, bf16 and
   fp16 against strict fp32 on 64 synthetic 288x288 pairs whose distortion spans none to strong, 5 windows each
   (SRCC >= 0.999 and the max relative deviation bounded, :data:`BOUNDS`); the GEMM deformable convolution against
   torchvision's kernel in float64, in fp32 and under bf16/fp16 autocast (relative L2 error bounded).
2. train: ``torchrun --nproc_per_node 1`` training with the model wrapped in DDP on NCCL (``AHIQ_FORCE_DDP=1``), bf16;
   an fp16 run stopped by SIGTERM sent to torchrun's process group mid-epoch (the stop message, no killed DataLoader
   worker, the loss scale in last.pth), then ``--resume``d to the end.
3. test: ``test.py`` on CUDA (strict fp32) and on the CPU with that checkpoint: predictions within 1e-4 relative, the
   NTIRE package's output.txt equal to the CUDA predictions.
4. benchmark: ``benchmarks.benchmark`` (20-crop ensemble on 288x288, baseline vs project, fp32 and bf16; 1, 4 and 25
   distorted images per reference, the baseline measured once) with peak memory; the fast scores equal the
   baseline's (1e-4) and the project is faster.

Backbones are random (``--no_pretrained``; the GPU machine has no hub access): this checks computation, not accuracy.
Each check runs even when an earlier one failed; a one-screen summary is printed and everything is written as JSON
(``--out``, default results/gpu_check.json); the exit code is 1 when any check failed. Without CUDA it says so in
one line and exits with 2. ``--allow_cpu --quick`` runs the same script on the CPU at toy sizes, to test the script.
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

from utils.files import read_text

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


BOUNDS = {  # max relative score deviation from strict fp32 on CUDA, and the SRCC each precision must keep
    "cpu": 1e-4, "tf32": 5e-3, "bf16": 2e-2, "fp16": 5e-3, "srcc": 0.999,
    # deformable conv, relative L2 error against torchvision's kernel in float64 (the CPU tests' bounds)
    "deform_fp32": 1e-5, "deform_bf16": 1e-2, "deform_fp16": 2e-3,
}


def spread_pairs(n: int, size: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` synthetic pairs whose distortion grows from none to strong (noise, then blur), 5 fixed windows each:
    scores that spread, so an SRCC between precisions measures something even with random backbones."""
    import cv2

    from data.windows import crop_stack, fixed_windows
    rng = np.random.default_rng(0)
    dis, ref = [], []
    for i in range(n):
        r = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 2 + i % 5)
        level = i / max(n - 1, 1)
        d = r.astype(np.float32) + rng.normal(0, 60 * level, r.shape)
        d = cv2.GaussianBlur(np.clip(d, 0, 255).astype(np.uint8), (0, 0), 0.1 + 3 * level)
        windows = fixed_windows(size, size, crop)[:5]
        dis.append(crop_stack(d, windows, crop))
        ref.append(crop_stack(r, windows, crop))
    return torch.stack(dis), torch.stack(ref)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def check_agreement(cfg: argparse.Namespace) -> dict:
    """Strict fp32 on CUDA against the CPU; TF32, bf16 and fp16 against strict fp32; the GEMM deformable conv
    against torchvision's kernel in fp32 and under autocast. Every number judged against :data:`BOUNDS`."""
    from torchvision.ops import deform_conv2d

    from engine.loop import score_crops
    from models import build_model
    from models.deform import deform_conv2d_gemm

    n = 8 if cfg.quick else 64
    dis, ref = spread_pairs(n, cfg.size, cfg.crop)
    torch.manual_seed(0)
    model = build_model(8, pretrained=False).eval()
    n_cpu = min(4, n)
    cpu = score_crops(model, dis[:n_cpu], ref[:n_cpu], 20).scores.double()
    model.to(cfg.device)

    def scores(dtype=None, tf32: bool = False) -> torch.Tensor:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        try:
            return score_crops(model, dis, ref, 50, dtype).scores.double().cpu()
        finally:  # strict fp32 for everything else
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    fp32 = scores()
    out = {"images": n, "crops": 5, "bounds": BOUNDS, "fp32_score_range": [float(fp32.min()), float(fp32.max())],
           "cpu_max_rel_dev": float(((fp32[:n_cpu] - cpu).abs() / cpu.abs()).max())}
    ok = [out["cpu_max_rel_dev"] <= BOUNDS["cpu"]]
    for name, dtype, tf32 in (("tf32", None, True), ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False)):
        if cfg.device != "cuda":  # the CPU has no TF32 and --amp runs fp32 there: nothing to compare
            continue
        got = scores(dtype, tf32)
        out[f"{name}_max_rel_dev"] = float(((got - fp32).abs() / fp32.abs()).max())
        out[f"{name}_srcc"] = float(stats.spearmanr(got.numpy(), fp32.numpy())[0])
        ok += [out[f"{name}_max_rel_dev"] <= BOUNDS[name], out[f"{name}_srcc"] >= BOUNDS["srcc"]]
    g = torch.Generator().manual_seed(3)
    side = cfg.crop // 4
    x = torch.randn(4, 768, side, side, generator=g).to(cfg.device)
    offset = (torch.randn(4, 18, side, side, generator=g) * 3).to(cfg.device)
    weight = (torch.randn(768, 768, 3, 3, generator=g) * 0.01).to(cfg.device)
    bias = torch.randn(768, generator=g).to(cfg.device)
    exact = deform_conv2d(x.double(), offset.double(), weight.double(), bias.double(), padding=(1, 1))
    out["deform_fp32_rel_l2"] = rel_l2(deform_conv2d_gemm(x, offset, weight, bias, padding=1), exact)
    ok.append(out["deform_fp32_rel_l2"] <= BOUNDS["deform_fp32"])
    if cfg.device == "cuda":
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            with torch.autocast("cuda", dtype=dtype):
                got = deform_conv2d_gemm(x, offset, weight, bias, padding=1)
            out[f"deform_{name}_rel_l2"] = rel_l2(got.float(), exact)
            ok.append(out[f"deform_{name}_rel_l2"] <= BOUNDS[f"deform_{name}"])
    out["ok"] = all(ok)
    return out


def train_args(cfg: argparse.Namespace, data: str, ckpts: str, name: str, *extra: str) -> list[str]:
    return ["--train_ref_path", f"{data}/ref", "--train_dis_path", f"{data}/dis", "--train_list",
            f"{data}/train.txt", "--val_ref_path", f"{data}/ref", "--val_dis_path", f"{data}/dis", "--val_list",
            f"{data}/val.txt", "--checkpoints_dir", ckpts, "--name", name, "--no_pretrained", "--crop_size",
            str(cfg.crop), "--gpu_ids", cfg.gpu_ids, "--num_workers", "2", "--num_avg_val", "1", "--batch_size",
            "2", "--save_interval", "100", *extra]


def torchrun(args: list[str], log: str) -> subprocess.Popen:
    """train.py under ``torchrun --nproc_per_node 1`` with the model wrapped in DDP on the GPU's backend
    (AHIQ_FORCE_DDP=1: a process group of one), started in its own session as a scheduler starts it."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                                 "train.py", *args], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "AHIQ_FORCE_DDP": "1", "OMP_NUM_THREADS": "4"},
                                start_new_session=True)


def check_train(cfg: argparse.Namespace, data: str, folder: str) -> dict:
    """bf16 training through torchrun with DDP (NCCL on the GPU); an fp16 run stopped by SIGTERM sent to torchrun's
    process group mid-epoch, then --resume'd to the end: exit codes, losses, the saved loss scale, the log's
    message."""
    ckpts = os.path.join(folder, "ckpts")
    os.makedirs(ckpts, exist_ok=True)
    out: dict = {}
    backend = "nccl" if cfg.device == "cuda" else "gloo"
    log = os.path.join(ckpts, "bf16.log")
    code = torchrun(train_args(cfg, data, ckpts, "ddp_bf16", "--amp", "--n_epoch", "1"), log).wait(timeout=400)
    text = read_text(log)
    last = os.path.join(ckpts, "ddp_bf16", "last.pth")
    loss = float(torch.load(last, weights_only=True)["loss"]) if os.path.isfile(last) else float("nan")
    out["ddp_bf16"] = {"exit_code": code, "loss": loss, "ddp_backend_logged": f"DDP over {backend}" in text}
    if not (code == 0 and np.isfinite(loss) and out["ddp_bf16"]["ddp_backend_logged"]):
        out["ddp_bf16"]["log"] = text[-1500:]
    args = train_args(cfg, data, ckpts, "fp16_resume", "--amp", "--amp_dtype", "fp16", "--n_epoch", "2")
    log = os.path.join(ckpts, "fp16_stop.log")
    proc = torchrun(args, log)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and "loss=" not in read_text(log):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)  # torchrun and its rank (and the rank's DataLoader workers' parents)
    proc.wait(timeout=300)
    stopped = read_text(log)
    state = torch.load(os.path.join(ckpts, "fp16_resume", "last.pth"), weights_only=True)
    resumed_log = os.path.join(ckpts, "fp16_resume.log")
    resumed = torchrun(args + ["--resume"], resumed_log).wait(timeout=400)
    final = torch.load(os.path.join(ckpts, "fp16_resume", "last.pth"), weights_only=True)
    fp16_used = cfg.device == "cuda"  # on the CPU --amp runs fp32: no loss scale to save
    out["sigterm_resume"] = {
        "stopped_message": "stopped by SIGTERM" in stopped and "continue with --resume" in stopped,
        "workers_survived": "DataLoader worker" not in stopped, "stopped_at": [state["train_state"]["epoch"],
                                                                            state["train_state"]["step"]],
        "scaler_saved": bool(state.get("scaler_state_dict")) == fp16_used, "resume_exit_code": resumed,
        "final_epoch": final["train_state"]["epoch"], "loss": float(final["loss"])}
    r = out["sigterm_resume"]
    r["ok"] = bool(r["stopped_message"] and r["workers_survived"] and r["scaler_saved"] and resumed == 0
                   and r["final_epoch"] == 2 and np.isfinite(r["loss"]))
    if not r["ok"]:
        r["log"] = (stopped + read_text(resumed_log))[-2000:]
    out["ok"] = bool(out["ddp_bf16"]["exit_code"] == 0 and np.isfinite(loss) and out["ddp_bf16"][
        "ddp_backend_logged"] and r["ok"])
    return out


def check_test(cfg: argparse.Namespace, data: str, folder: str) -> dict:
    """test.py on CUDA (strict fp32) and on the CPU with the trained checkpoint: the predictions agree within
    1e-4 relative, and the NTIRE package's output.txt holds the CUDA predictions."""
    ckpt = os.path.join(folder, "ckpts", "fp16_resume", "last.pth")
    package = os.path.join(folder, "submission")
    common = ["test.py", "--test_ref_path", f"{data}/ref", "--test_dis_path", f"{data}/dis", "--test_list",
              f"{data}/test.txt", "--ckpt", ckpt, "--no_pretrained", "--n_ensemble", "2", "--no_tf32",
              "--checkpoints_dir", folder]
    gpu = run_py([*common, "--gpu_ids", cfg.gpu_ids, "--name", "on_gpu", "--submission", package], 400)
    cpu = run_py([*common, "--gpu_ids", "-1", "--name", "on_cpu"], 400)
    out = {"gpu_exit_code": gpu.returncode, "cpu_exit_code": cpu.returncode}
    if gpu.returncode or cpu.returncode:
        out.update(ok=False, log=(gpu.stderr + cpu.stderr)[-2000:])
        return out

    def scores(path: str) -> np.ndarray:
        return np.array([float(line.split(",")[1]) for line in read_text(path).splitlines()])

    on_gpu, on_cpu = scores(os.path.join(folder, "on_gpu", "results.txt")), scores(
        os.path.join(folder, "on_cpu", "results.txt"))
    out["images"] = len(on_gpu)
    out["max_rel_dev"] = float(np.max(np.abs(on_gpu - on_cpu) / np.abs(on_cpu)))
    out["package_equals_gpu"] = bool(np.array_equal(scores(os.path.join(package, "output.txt")), on_gpu))
    with zipfile.ZipFile(os.path.join(package, "submission.zip")) as zf:
        out["zip_members"] = sorted(zf.namelist())
    out["ok"] = (out["max_rel_dev"] <= BOUNDS["cpu"] and out["package_equals_gpu"]
                 and out["zip_members"] == ["output.txt", "readme.txt"] and len(on_gpu) > 0)
    return out


def check_benchmark(cfg: argparse.Namespace) -> dict:
    """The benchmark (20-crop ensemble on 288x288; 1, 4 and 25 distorted images per reference, the baseline
    measured once), with peak memory; judged: fast and shared scores equal the baseline's, and the project is faster
    than the official-style baseline."""
    from benchmarks.benchmark import main as benchmark
    args = ["--device", cfg.device, "--images", "50", "--n_ensemble", "20", "--repeats", "3", "--per_reference", "1",
            "4", "25"]
    if cfg.quick:
        args = ["--device", cfg.device, "--images", "2", "--size", str(cfg.size), "--crop", str(cfg.crop),
                "--n_ensemble", "3", "--repeats", "1", "--train_batch", "2", "--per_reference", "1", "2"]
    out = benchmark(args)
    out["ok"] = bool(out["test"]["fp32_max_rel_dev"] < 1e-4 and all(r["max_rel_dev"] < 1e-4 for r in out[
        "per_reference"] if r["amp"] == "fp32") and (cfg.quick or out["test"]["fp32_speedup"] > 1))
    return out


def summary(results: dict) -> str:
    lines = [f"GPU check on {results['device']} (torch {results['torch']}, CUDA {results['cuda']}), "
             f"{results['seconds']:.0f} s"]
    for name, res in results["checks"].items():
        status = "ok" if res.get("ok") else "FAILED"
        lines.append(f"  {name:<10} {status}  ({res.get('seconds', 0):.0f} s)")
    a = results["checks"].get("agreement", {})
    if "cpu_max_rel_dev" in a:
        parts = [f"fp32 vs CPU {a['cpu_max_rel_dev']:.1e}"] + [
            f"{k} {a[k + '_max_rel_dev']:.1e} (SRCC {a[k + '_srcc']:.5f})" for k in ("tf32", "bf16", "fp16")
            if k + "_max_rel_dev" in a]
        lines.append(f"  max rel. score deviation, {a['images']} pairs: " + "; ".join(parts))
        lines.append("  deformable conv rel. L2 vs torchvision: " + "; ".join(
            f"{k[7:-7]} {a[k]:.1e}" for k in a if k.startswith("deform_") and k.endswith("_rel_l2")))
    t = results["checks"].get("test", {})
    if "max_rel_dev" in t:
        lines.append(f"  test.py CUDA vs CPU on {t['images']} images: max rel. dev {t['max_rel_dev']:.1e}")
    b = results["checks"].get("benchmark", {})
    for r in b.get("per_reference", []):
        lines.append(f"  {r['per_reference']} per reference ({r['amp']}): {r['shared_images_per_s']:.3g} images/s, "
                     f"{r['speedup']:.2f}x the baseline")
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
            "agreement": lambda: check_agreement(cfg), "train": lambda: check_train(cfg, data, folder),
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
