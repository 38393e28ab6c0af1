"""Running as on a GPU box, as far as the CPU allows: collectives only on the rank's device and only through
utils/distributed.py, two nodes through train.sh's own command line, the fp16 loss scale in checkpoints, and the
one-line errors for more processes than GPUs and for a GPU that is not there."""
from __future__ import annotations

import ast
import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from engine.loop import train_one_epoch
from options.train_options import parse_train_options
from tests.conftest import TINY_ARGS, list_dataset, make_pipal_set
from tests.forks import free_port, ranks, run_ranks
from utils.checkpoint import load_checkpoint
from utils.distributed import DistInfo, backend_for, rank_device, reduce_step
from utils.errors import AHIQError

REPO = Path(__file__).resolve().parents[1]


def _shell_env() -> dict:
    """train.sh run with this interpreter's environment (as an activated virtualenv)."""
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, "VIRTUAL_ENV": sys.prefix, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_a_collective_on_another_device_than_the_ranks_is_refused():
    """What NCCL would do to a CPU tensor on a GPU rank, caught before any collective runs (no GPU needed)."""
    info = DistInfo(rank=1, world_size=2, local_rank=1, device="cuda:1", group=True)
    with pytest.raises(RuntimeError, match="cpu tensor from rank 1, whose device is cuda:1"):
        reduce_step(torch.tensor(0.5), False, info)


def test_no_module_but_utils_distributed_talks_to_torch_distributed():
    """Every collective goes through the checked helpers; a stray dist.all_reduce elsewhere fails this test."""
    offenders = []
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith((".venv/", "tests/")) or rel == "utils/distributed.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
                names = [f"torch.{node.attr}"]
            offenders += [f"{rel}:{node.lineno}" for n in names if n.startswith("torch.distributed")]
    assert not offenders, offenders


def test_rank_device_takes_each_processs_own_gpu_and_refuses_missing_ones(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [rank_device("cuda:0", [0], r, 2) for r in (0, 1)] == ["cuda:0", "cuda:1"]
    with pytest.raises(AHIQError, match="process 1 of this node needs GPU 3, but this machine has 2 GPU"):
        rank_device("cuda:2", [2, 3], 1, 2)
    assert rank_device("cpu", [], 1, 4) == "cpu"
    with pytest.raises(AHIQError, match="needs GPU 2, but this machine has 2 GPU"):
        rank_device("cuda:0", [0], 2, 3)
    with pytest.raises(AHIQError, match="names 2 GPUs for 3 processes per node"):
        rank_device("cuda:0", [0, 1], 0, 3)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert rank_device("cuda:2", [2, 3], 1, 2) == "cuda:3"  # --gpu_ids 2,3 names them
    assert rank_device("cuda:3", [3], 0, 1) == "cuda:3"  # one process: the GPU named, not GPU 0
    with pytest.raises(AHIQError, match="gpu_ids 3: names one GPU for 2 processes per node; name one per process"):
        rank_device("cuda:3", [3], 0, 2)


def test_gpu_ids_naming_a_missing_gpu_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(AHIQError, match=r"--gpu_ids 0,3: no GPU 3 here \(this machine has 2: 0-1\)"):
        parse_train_options(["--gpu_ids", "0,3", "--no_pretrained", "--checkpoints_dir", str(tmp_path)])
    with pytest.raises(AHIQError, match=r"--gpu_ids 0,x: expected comma-separated integers"):
        parse_train_options(["--gpu_ids", "0,x", "--no_pretrained", "--checkpoints_dir", str(tmp_path)])


@pytest.mark.slow
def test_nproc_larger_than_the_gpus_present_stops_in_one_line(tmp_path):
    nproc = max(2, torch.cuda.device_count() + 1)  # one more than this machine has, whatever it has
    proc = subprocess.run(["sh", "train.sh", "--checkpoints_dir", str(tmp_path)], cwd=REPO, env={
        **_shell_env(), "NPROC": str(nproc), "GPU_IDS": "0"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: NPROC={nproc} processes need one GPU each, but this machine has {torch.cuda.device_count()}; set "
        f"NPROC to at most {torch.cuda.device_count()}, or GPU_IDS=-1 to run on the CPU"]
    assert not any(tmp_path.iterdir())


def _scaled_steps(model, batches, optimizer, scheduler, scaler) -> list[float]:
    return train_one_epoch(model, batches, optimizer, scheduler, "cpu", None, scaler,
                           lambda t: lambda: (t.item(), False), lambda *_: None, progress=False).losses


@pytest.mark.slow
def test_the_fp16_loss_scale_is_saved_and_restored_exactly(tiny_factory, tmp_path):
    """The fp16 path's checkpoint round trip as the CPU runs it: a GradScaler (growing every 2 steps, so its state
    moves) through train.save and train.restore, then more steps equal to an uninterrupted run."""
    data = make_pipal_set(tmp_path / "set", n_refs=2, n_dis=2, size=(32, 32))
    samples = list_dataset(data, 32, 1)
    batches = [torch.utils.data.default_collate([samples[(0, i)], samples[(0, (i + 1) % 4)]]) for i in range(4)]
    opt = parse_train_options(["--train_list", data["list"], "--train_ref_path", data["ref"], "--train_dis_path",
                               data["dis"], "--checkpoints_dir", str(tmp_path), "--gpu_ids", "-1",
                               "--no_pretrained", "--crop_size", "32"])

    def fresh():
        model = copy.deepcopy(tiny_factory(8))
        params = [p for part in model.trainable_parts().values() for p in part.parameters()]
        optimizer = torch.optim.Adam(params, lr=1e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=50)
        return model, optimizer, scheduler, torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)

    whole = fresh()
    losses_whole = _scaled_steps(whole[0], batches, whole[1], whole[2], whole[3])
    first = fresh()
    _scaled_steps(first[0], batches[:3], first[1], first[2], first[3])
    assert first[3].get_scale() == 2.0 ** 11  # grew once: the state to carry over is not the initial one
    path = train.Saver(opt, *first, samples)("last.pth", train.TrainState(epoch=0, step=3), 0.0, full=True)
    assert path == str(tmp_path / "ahiq_train" / "last.pth")
    second = fresh()
    train.restore(load_checkpoint(path), path, *second, exact=True)
    assert second[3].state_dict() == first[3].state_dict()
    losses_rest = _scaled_steps(second[0], batches[3:], second[1], second[2], second[3])
    assert losses_rest == losses_whole[3:]
    assert second[3].state_dict() == whole[3].state_dict() and whole[3].get_scale() == 2.0 ** 12
    for a, b in zip(whole[0].trainable_state_dict().values(), second[0].trainable_state_dict().values()):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.slow
def test_two_nodes_through_train_sh_write_one_run_folder(tmp_path):
    train_set = make_pipal_set(tmp_path / "train", n_refs=2, n_dis=3, size=(32, 32), seed=1)
    val_set = make_pipal_set(tmp_path / "val", n_refs=1, n_dis=3, size=(32, 32), seed=2)
    ckpts = tmp_path / "ckpts"
    args = ["--train_ref_path", train_set["ref"], "--train_dis_path", train_set["dis"], "--train_list",
            train_set["list"], "--val_ref_path", val_set["ref"], "--val_dis_path", val_set["dis"], "--val_list",
            val_set["list"], *TINY_ARGS, "--checkpoints_dir", str(ckpts), "--name", "two_nodes", "--crop_size", "32",
            "--num_workers", "0", "--num_avg_val", "1", "--batch_size", "1", "--n_epoch", "1"]
    env = {**_shell_env(), "NNODES": "2", "NPROC": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "GPU_IDS": "-1", "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(["sh", "train.sh", *args], cwd=REPO, env={**env, "NODE_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for rank, (node, out) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {rank}:\n{out[-3000:]}"
    assert [p.name for p in ckpts.iterdir()] == ["two_nodes"]
    run = ckpts / "two_nodes"
    assert {"last.pth", "best.pth", "log.txt", "opt_train.json"} <= {p.name for p in run.iterdir()}
    log_text = (run / "log.txt").read_text()
    assert "2 process(es) on cpu" in log_text and "epoch 1: SRCC" in log_text
    # 6 pairs over 2 ranks at batch 1: 3 steps an epoch, the loss averaged over both ranks at each
    ckpt = torch.load(run / "last.pth", weights_only=True)
    assert ckpt["train_state"]["global_step"] == 3 and np.isfinite(ckpt["loss"])


def test_gpu_runs_use_nccl_alone_and_cpu_runs_gloo():
    assert backend_for("cuda:3") == "nccl" and backend_for("cpu") == "gloo"


def test_a_checkpoint_saved_with_more_gpus_visible_resumes(monkeypatch):
    """Older checkpoints hold one CUDA generator state per GPU then visible; resuming on a node with fewer GPUs (or
    a SLURM requeue with another CUDA_VISIBLE_DEVICES) must not touch the CUDA generators at all."""
    def refuse(*_a, **_k):
        raise AssertionError("a CUDA generator state was restored")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", refuse)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse)
    state = train.rng_state()
    assert "cuda" not in state
    expected = torch.rand(3)
    train.set_rng_state({**state, "cuda": [torch.zeros(16, dtype=torch.uint8)] * 8})  # saved on an 8-GPU node
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
def test_sigterm_from_torchrun_saves_last_and_resumes_exactly(tmp_path):
    """NPROC=2 GPU_IDS=-1 sh train.sh with two DataLoader workers per rank (one process without torchrun:
    tests/test_train.py, SIGTERM to every process of the job).
    SIGTERM to torchrun, which sends it to each rank's whole process group as it does on a real stop (and as SLURM
    does): the workers, in their own groups, survive it; both ranks finish the step, rank 0 saves last.pth and names
    it; --resume (two forked ranks) then ends with the weights of an uninterrupted run. (A resumed trainer's exit
    with workers that ignore SIGTERM: tests/test_train.py, through train.sh.)"""
    train_set = make_pipal_set(tmp_path / "train", n_refs=2, n_dis=6, size=(32, 32), seed=1)
    val_set = make_pipal_set(tmp_path / "val", n_refs=1, n_dis=2, size=(32, 32), seed=2)
    ckpts = tmp_path / "ckpts"
    common = ["--train_ref_path", train_set["ref"], "--train_dis_path", train_set["dis"], "--train_list",
              train_set["list"], "--val_ref_path", val_set["ref"], "--val_dis_path", val_set["dis"], "--val_list",
              val_set["list"], *TINY_ARGS, "--checkpoints_dir", str(ckpts), "--crop_size", "32", "--num_workers",
              "2", "--num_avg_val", "1", "--batch_size", "1", "--n_epoch", "2", "--save_interval", "100"]
    env = {**_shell_env(), "NPROC": "2", "GPU_IDS": "-1", "OMP_NUM_THREADS": "1"}

    def launch(name: str, *extra: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}{len(extra)}.log"
        with open(log, "w") as f:  # torchrun (train.sh execs it) in its own session, as a job scheduler starts it
            return subprocess.Popen(["sh", "train.sh", *common, "--name", name, *extra], cwd=REPO, env=env,
                                    stdout=f, stderr=subprocess.STDOUT, start_new_session=True), log

    full_log = tmp_path / "full.log"  # the uninterrupted run: two forked ranks (tests/forks.py), the same DDP job
    assert run_ranks("train", [*common, "--name", "full"], full_log, timeout=600) == 0, full_log.read_text()[-3000:]
    stopped, log = launch("stopped")
    deadline = time.time() + 300
    while "loss=" not in log.read_text() and time.time() < deadline and stopped.poll() is None:
        time.sleep(0.1)
    stopped.send_signal(signal.SIGTERM)
    stopped.wait(timeout=300)
    text = log.read_text()
    assert "stopped by SIGTERM" in text and "continue with --resume" in text, text[-3000:]
    assert "DataLoader worker" not in text and "killed by signal" not in text, text[-3000:]
    state = torch.load(ckpts / "stopped" / "last.pth", weights_only=True)["train_state"]
    assert (state["epoch"], state["step"]) < (2, 0)  # stopped before the end
    resumed_log = tmp_path / "resumed.log"
    assert run_ranks("train", [*common, "--name", "stopped", "--resume"], resumed_log, timeout=600) == 0, \
        resumed_log.read_text()[-3000:]
    assert "done: best.pth holds epoch" in resumed_log.read_text(), resumed_log.read_text()[-3000:]
    a = load_checkpoint(str(ckpts / "full" / "last.pth"))
    b = load_checkpoint(str(ckpts / "stopped" / "last.pth"))
    for part in ("regressor_model_state_dict", "deform_net_model_state_dict"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0)


def test_srun_without_torchrun_is_refused_in_one_line(monkeypatch):
    """`srun python train.py` with 4 tasks starts 4 lone trainers in one run folder: refused, naming the fix."""
    from utils.distributed import init_distributed
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(AHIQError, match=r"one of 4 processes srun started without torchrun.*srun "
                                        r"--ntasks-per-node=1 torchrun"):
        init_distributed("cpu")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # one task (an sbatch script's own python): runs as ever
    assert not init_distributed("cpu").enabled


def _late_rank(out: Path) -> Callable[[], None]:
    """One rank of two (tests/forks.ranks): rank 1 never meets rank 0 at its barrier; rank 0 writes how long it
    waited before failing to ``out``, and exits with 5."""
    def main() -> None:
        from utils.distributed import barrier, init_distributed
        info = init_distributed("cpu", timeout_min=0.05)
        if info.rank == 1:
            time.sleep(60)
        start = time.time()
        try:
            barrier(info)
        except Exception as err:
            out.write_text(f"failed after {time.time() - start:.1f} s: {type(err).__name__}")
            sys.exit(5)

    return main


@pytest.mark.slow
def test_a_rank_waits_for_the_others_as_long_as_the_timeout_says(tmp_path):
    """init_distributed's timeout reaches the process group: a rank whose partner never arrives fails after it
    (here 3 s), not after PyTorch's default (10 min for NCCL, 30 for gloo). The two ranks are forked from this
    process (no interpreter to start; tests/forks.py says why that is safe here)."""
    out = tmp_path / "rank0.txt"
    first, late = ranks(_late_rank(out), [], tmp_path / "ranks.log")
    try:
        code = first.wait(timeout=60)
    finally:
        late.kill()
    assert code == 5, (tmp_path / "ranks.log").read_text()
    text = out.read_text()
    seconds = float(text.split("failed after ")[1].split(" s")[0])
    assert 2.5 <= seconds < 30, text
