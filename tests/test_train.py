"""train.py: exact resume (epoch boundary and SIGTERM mid-epoch), the optimizer holds only the head, the loss
falls when overfitting, TensorBoard scalars, and torchrun validation equal to one process."""
from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from benchmarks.gpu_check import job_pids
from engine.loop import train_one_epoch
from tests import ddp_validate
from tests.conftest import heads_of, list_dataset, make_pipal_set, run_to_exit, train_args
from tests.forks import Forked, run_ranks
from utils.checkpoint import load_checkpoint
from utils.errors import AHIQError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_epoch_run(train_sets, tmp_path_factory) -> Path:
    ckpts = tmp_path_factory.mktemp("ckpts")
    state = train.main(train_args(train_sets, ckpts, "full", "--n_epoch", "2", "--log_every", "1"))
    assert state.epoch == 2 and state.global_step == 10  # 9 pairs, batch 2: 5 steps an epoch, none dropped
    return ckpts / "full"


def test_resume_at_epoch_boundary_gives_identical_weights(train_sets, tmp_path, two_epoch_run):
    train.main(train_args(train_sets, tmp_path, "split", "--n_epoch", "1"))
    after_one = heads_of(tmp_path / "split" / "last.pth")
    train.main(train_args(train_sets, tmp_path, "split", "--n_epoch", "2", "--resume"))
    a, b = heads_of(two_epoch_run / "last.pth"), heads_of(tmp_path / "split" / "last.pth")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # the second epoch really changed the weights, so the equality above is not vacuous
    assert any(not torch.equal(after_one[k][n], a[k][n]) for k in a for n in a[k])


def test_checkpoints_hold_the_official_keys_and_only_the_head_is_optimised(two_epoch_run, tiny_factory):
    ckpt = torch.load(two_epoch_run / "last.pth", weights_only=True)
    head = tiny_factory(8).trainable_state_dict()
    n_trainable = sum(len(sd) for sd in head.values())
    assert len(ckpt["optimizer_state_dict"]["param_groups"][0]["params"]) == n_trainable
    assert ckpt["epoch"] == 1 and ckpt["train_state"]["epoch"] == 2
    norm = ckpt["ahiq"]["label_norm"]
    assert norm["mos_min"] < norm["mos_max"] and norm["lower_better"] is False
    assert sorted(p.name for p in two_epoch_run.glob("*.pth")) == ["best.pth", "last.pth"]
    best = torch.load(two_epoch_run / "best.pth", weights_only=True)  # weights and metadata, no optimizer state
    assert not {"optimizer_state_dict", "scheduler_state_dict", "train_state"} & set(best)
    assert best["ahiq"]["model"] == ckpt["ahiq"]["model"] and best["ahiq"]["model"]["crop_size"] == 32
    assert (two_epoch_run / "opt_train.txt").is_file() and json.loads((two_epoch_run / "opt_train.json").read_text())
    assert "epoch 2: SRCC" in (two_epoch_run / "log.txt").read_text()


def test_tensorboard_has_the_scalars_and_the_scatter_figure(two_epoch_run):
    events = EventAccumulator(str(two_epoch_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/lr", "val/list/srcc", "val/list/plcc", "val/list/krcc", "val/list/rmse"):
        assert tag in tags["scalars"], tag
    assert len(events.Scalars("train/loss")) == 10 and len(events.Scalars("val/list/srcc")) == 2
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs[0] == pytest.approx(1e-4) and lrs[1] < lrs[0]  # cosine schedule stepped every iteration
    assert "val/list/scatter" in tags["images"]


def test_existing_run_is_never_overwritten(train_sets, two_epoch_run):
    before = (two_epoch_run / "last.pth").stat().st_mtime_ns
    with pytest.raises(AHIQError, match="already holds checkpoints.*--resume"):
        train.main(train_args(train_sets, two_epoch_run.parent, "full", "--n_epoch", "3"))
    assert (two_epoch_run / "last.pth").stat().st_mtime_ns == before


def _sigterm_when(args: list[str], marker: str, tmp_path) -> str:
    """train.py ARGS, SIGTERM once ``marker`` shows in its output; it must exit with 3. Returns the output."""
    err = tmp_path / "stderr.txt"
    proc = Forked("train", args, err)  # train.py forked from this process (tests/forks.py)
    deadline = time.time() + 240
    while marker not in err.read_text() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=240) == 3, err.read_text()
    return err.read_text()


@pytest.mark.slow
def test_sigterm_saves_last_and_the_run_resumes_exactly(train_sets, tmp_path, two_epoch_run):
    args = train_args(train_sets, tmp_path, "stopped", "--n_epoch", "2")
    text = _sigterm_when(args, "loss=", tmp_path)
    assert "stopped by SIGTERM" in text and "last.pth" in text and "--resume" in text and "Traceback" not in text
    ckpt = torch.load(tmp_path / "stopped" / "last.pth", weights_only=True)
    assert ckpt["train_state"]["epoch"] == 0 and 1 <= ckpt["train_state"]["step"] < 5
    train.main(args + ["--resume"])
    a, b = heads_of(two_epoch_run / "last.pth"), heads_of(tmp_path / "stopped" / "last.pth")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def _launch_trainer(args: list[str], log: Path) -> Forked:
    """train.py ARGS in its own session with two DataLoader workers, as a job scheduler starts it (forked:
    tests/forks.py; the resumed runs go through train.sh in a new interpreter)."""
    return Forked("train", [*args, "--num_workers", "2"], log)


def _wait_for(log: Path, marker: str, proc: Forked) -> None:
    deadline = time.time() + 240
    while marker not in log.read_text() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, log.read_text()[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="lists a job's processes from /proc (Linux)")
def test_sigterm_to_every_process_of_the_job_saves_last_and_resumes_exactly(train_sets, tmp_path, two_epoch_run):
    """SLURM with cgroup tracking (scancel, the time limit) sends SIGTERM to each process of the job: the trainer
    and its DataLoader workers alike. The workers ignore it, the trainer finishes the step, saves last.pth and exits
    with 3; --resume (through train.sh, with its workers) ends with the weights of an uninterrupted run (with
    workers or without: crops are drawn from the seed, the epoch and the index) and exits within seconds of its last
    line (its workers ignore SIGTERM: Python's exit clean-up alone would wait for them forever)."""
    args = train_args(train_sets, tmp_path, "stopped", "--n_epoch", "2")
    log = tmp_path / "stopped.log"
    proc = _launch_trainer(args, log)
    _wait_for(log, "loss=", proc)
    job = job_pids(proc.pid)
    assert len(job) >= 3, job  # the trainer and its two workers
    for pid in job:
        os.kill(pid, signal.SIGTERM)
    assert proc.wait(timeout=240) == 3, log.read_text()[-3000:]
    text = log.read_text()
    assert "stopped by SIGTERM" in text and "--resume" in text, text[-3000:]
    assert "DataLoader worker" not in text and "Traceback" not in text, text[-3000:]
    state = torch.load(tmp_path / "stopped" / "last.pth", weights_only=True)["train_state"]
    assert (state["epoch"], state["step"]) < (2, 0)
    from tests.test_distributed import _shell_env
    resumed = tmp_path / "resumed.log"
    code, linger = run_to_exit(["sh", "train.sh", *args, "--num_workers", "2", "--resume"], resumed, _shell_env())
    assert code == 0 and "done: best.pth holds epoch" in resumed.read_text(), resumed.read_text()[-3000:]
    assert linger < 5, f"exited {linger:.1f} s after its last line"
    a, b = heads_of(two_epoch_run / "last.pth"), heads_of(tmp_path / "stopped" / "last.pth")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_do_not_outlive_a_killed_trainer(train_sets, tmp_path):
    """kill -9 of the trainer (an OOM kill, a lost node): its DataLoader workers, which ignore SIGTERM, are gone
    within two seconds (without PR_SET_PDEATHSIG they polled for their parent every 5 s)."""
    log = tmp_path / "killed.log"
    proc = _launch_trainer(train_args(train_sets, tmp_path, "killed", "--n_epoch", "2"), log)
    _wait_for(log, "loss=", proc)
    workers = [pid for pid in job_pids(proc.pid) if pid != proc.pid]
    assert len(workers) == 2, workers
    proc.kill()
    proc.wait(timeout=30)
    start = time.time()
    while job_pids(proc.pid) and time.time() - start < 10:
        time.sleep(0.05)
    assert not job_pids(proc.pid) and time.time() - start < 2.0, (workers, time.time() - start)


@pytest.mark.slow
def test_sigterm_during_validation_is_acted_on_at_the_next_validation_batch(train_sets, tmp_path):
    """The stop comes while epoch 1 validates (60 images, batches of 2): last.pth holds epoch 1 complete (not a step
    of epoch 2, as when the stop waited for the next training step), and the message says where it stopped."""
    val = make_pipal_set(tmp_path / "val", n_refs=6, n_dis=10, size=(40, 40), seed=9)
    args = train_args(train_sets, tmp_path, "val_stop", "--n_epoch", "2", "--val_ref_path", val["ref"],
                      "--val_dis_path", val["dis"], "--val_list", val["list"], "--val_batch_size", "2",
                      "--num_avg_val", "5")
    text = _sigterm_when(args, "validate:", tmp_path)
    assert "stopped by SIGTERM during the validation of epoch 1" in text and "Traceback" not in text, text[-2000:]
    state = torch.load(tmp_path / "val_stop" / "last.pth", weights_only=True)["train_state"]
    assert (state["epoch"], state["step"]) == (1, 0)


def test_training_fits_a_few_pairs(tiny_factory, train_sets):
    """A learning sanity check: on a fixed batch the loss falls far below the label variance (so the model learns
    the differences between pairs, not just their mean) and the predictions rank the pairs correctly (lr 1e-3: the
    tiny head of the tests, 16 channels wide, learns slower than the paper's at 1e-4)."""
    model = copy.deepcopy(tiny_factory(8))
    data = list_dataset(train_sets["train"], 32, 1)
    batch = torch.utils.data.default_collate([data[(0, i)] for i in range(6)])
    params = list(model.deform_net.parameters()) + list(model.regressor.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    result = train_one_epoch(model, [batch] * 30, optimizer, scheduler, "cpu", None, None,
                             lambda t: lambda: (t.item(), False), lambda *_: None, progress=False)
    variance = batch["label"].var(unbiased=False).item()
    assert np.mean(result.losses[-3:]) < 0.2 * variance, (variance, result.losses)
    with torch.no_grad():
        pred = model(batch["dis"][:, 0].float() / 255, batch["ref"][:, 0].float() / 255).view(-1)
    assert stats.spearmanr(pred.numpy(), batch["label"].numpy())[0] > 0.8


@pytest.mark.slow
def test_torchrun_validation_equals_one_process(train_sets, tmp_path, two_epoch_run):
    make_pipal_set(tmp_path / "val5", n_refs=3, n_dis=2, size=(40, 40), seed=3)  # 3 references: uneven shards
    args = train_args(train_sets, tmp_path, "ddp")
    args[args.index("--val_list") + 1] = str(tmp_path / "val5" / "list.txt")
    args[args.index("--val_ref_path") + 1] = str(tmp_path / "val5" / "ref")
    args[args.index("--val_dis_path") + 1] = str(tmp_path / "val5" / "dis")
    ckpt = str(two_epoch_run / "last.pth")
    runs = {}
    ddp_validate.main([str(tmp_path / "val_1.json"), ckpt, *args])  # one process: no process group, in this one
    runs[1] = json.loads((tmp_path / "val_1.json").read_text())
    log = tmp_path / "val_2.log"  # two ranks of one job, as torchrun starts them (tests/forks.py)
    assert run_ranks("tests.ddp_validate", [str(tmp_path / "val_2.json"), ckpt, *args], log) == 0, log.read_text()
    runs[2] = json.loads((tmp_path / "val_2.json").read_text())
    one, two = runs[1], runs[2]
    assert two["world_size"] == 2 and two["rank0_shard"] == [0, 1, 4, 5]  # whole references: A0000 and A0002
    assert len(two["preds"]) == len(one["preds"]) == 6
    np.testing.assert_allclose(two["preds"], one["preds"], rtol=1e-5)
    np.testing.assert_allclose(two["labels"], one["labels"], rtol=0)
    # the metrics of predictions equal to 1e-5: the random model's predictions sit in a narrow band, where PLCC
    # moves by ~5e-5 for 1e-6 of rounding (it did when this test ran alone), hence an absolute bound
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == (value if value is None or isinstance(value, str) else
                                       pytest.approx(value, rel=1e-5, abs=2e-4)), key


@pytest.mark.slow
def test_a_stop_seen_by_one_rank_during_validation_stops_every_rank(train_sets, tmp_path, two_epoch_run):
    """Rank 1 alone is asked to stop at its first validation batch while rank 0 scores its whole share: both stop
    (they agree before gathering) instead of rank 0 waiting in the gather while rank 1 waits at the stop's barrier."""
    args = train_args(train_sets, tmp_path, "ddp_stop")
    out = tmp_path / "stop.json"
    log = tmp_path / "stop.log"  # a hang would wait for gloo's timeout: run_ranks's ends it first
    code = run_ranks("tests.ddp_validate", [str(out), str(two_epoch_run / "last.pth"), *args], log, timeout=120,
                     env={"STOP_RANK": "1"})
    assert code == 0, log.read_text()
    assert [json.loads(Path(f"{out}.rank{r}").read_text())["stopped"] for r in (0, 1)] == [True, True]
    assert not out.exists()


def test_saved_heads_use_exactly_the_official_parameter_names(two_epoch_run):
    ckpt = torch.load(two_epoch_run / "best.pth", weights_only=True)
    deform = {"conv_offset", "deform", "conv1.0", "conv1.2"}
    head = {"down_channel", "feat_smoothing.0", "feat_smoothing.2", "conv1.0", "conv_attent.0", "conv.0"}
    assert set(ckpt["deform_net_model_state_dict"]) == {f"{m}.{p}" for m in deform for p in ("weight", "bias")}
    assert set(ckpt["regressor_model_state_dict"]) == {f"{m}.{p}" for m in head for p in ("weight", "bias")}


def test_a_diverged_run_stops_in_one_line_and_keeps_no_diverged_weights(train_sets, tmp_path):
    """--learning_rate 1e30 with one step an epoch (batch 9 of 9 pairs): the step's loss is finite, the weights it
    leaves are not; validation sees NaN/inf predictions and the run stops naming the epoch and the option, before
    any file of that epoch is written (it used to end 'done: best SRCC -1.0000' with exit 0)."""
    args = train_args(train_sets, tmp_path, "diverged", "--n_epoch", "2", "--learning_rate", "1e30",
                      "--batch_size", "9")
    with pytest.raises(AHIQError, match=r"epoch 1: \d+ of 6 validation predictions are NaN or infinite: the model "
                                        r"diverged .*no best\.pth was written.*--learning_rate than 1e\+30"):
        train.main(args)
    assert not list((tmp_path / "diverged").glob("*.pth"))


def test_a_crash_after_last_pth_is_completed_by_resume(train_sets, tmp_path):
    """Killed after the first epoch's last.pth and before its best.pth (the files are written in that order; the
    first validated epoch is always the best): a plain start says to --resume, and --resume writes the missing
    best.pth from last.pth's weights. The run folder is never stuck."""
    args = train_args(train_sets, tmp_path, "crashed", "--n_epoch", "1")
    train.main(args)
    run = tmp_path / "crashed"
    (run / "best.pth").unlink()
    with pytest.raises(AHIQError, match="already holds checkpoints.*pass --resume"):
        train.main(args)
    train.main(args + ["--resume"])
    restored = torch.load(run / "best.pth", weights_only=True)
    assert restored["ahiq"]["epochs_trained"] == 1
    for key, sd in heads_of(run / "last.pth").items():
        for name, tensor in sd.items():
            assert torch.equal(restored[key][name], tensor)


def test_a_folder_with_weights_only_is_never_stuck(train_sets, tmp_path, two_epoch_run):
    """A folder holding best.pth but no last.pth (protocol.py --keep best, or a hand-made one): a start and a resume
    each say the same way out (another --name), instead of sending the user from one to the other."""
    run = tmp_path / "kept"
    run.mkdir()
    shutil.copy(two_epoch_run / "best.pth", run / "best.pth")
    with pytest.raises(AHIQError, match=r"already holds checkpoints \(best\.pth, \.\.\.\); choose another --name "
                                        r"\(no last\.pth to resume from\)"):
        train.main(train_args(train_sets, tmp_path, "kept", "--n_epoch", "1"))
    with pytest.raises(AHIQError, match=r"last\.pth: nothing to resume from; it holds weights only .*another --name"):
        train.main(train_args(train_sets, tmp_path, "kept", "--n_epoch", "1", "--resume"))


class _Killed(BaseException):
    """Stands for kill -9: nothing after it runs (no handler catches a BaseException that is not an Exception)."""


@pytest.mark.parametrize("saves_done", [0, 1, 2])
def test_a_crash_at_any_save_of_the_first_epoch_leaves_a_folder_that_goes_on(train_sets, tmp_path, monkeypatch,
                                                                             saves_done):
    """The first epoch writes last.pth, best.pth, epoch_1.pth (atomic files, in that order); the process dies
    before the first, second or third. Then exactly one of a plain start and --resume is accepted, the other's
    message names it, and the run ends with all three files."""
    args = train_args(train_sets, tmp_path, "killed", "--n_epoch", "1", "--save_interval", "1")
    real, calls = train.save_weights, []

    def dies(path, *a, **k):
        if len(calls) == saves_done:
            raise _Killed(path)
        calls.append(path)
        real(path, *a, **k)

    monkeypatch.setattr(train, "save_weights", dies)
    with pytest.raises(_Killed):
        train.main(args)
    monkeypatch.setattr(train, "save_weights", real)
    run = tmp_path / "killed"
    if (run / "last.pth").exists():
        with pytest.raises(AHIQError, match="pass --resume"):
            train.main(args)
        train.main(args + ["--resume"])
    else:
        with pytest.raises(AHIQError, match="nothing to resume from; start without --resume"):
            train.main(args + ["--resume"])
        train.main(args)
    assert sorted(p.name for p in run.glob("*.pth")) == ["best.pth", "epoch_1.pth", "last.pth"]


def test_last_pth_on_a_time_interval_still_resumes_exactly(train_sets, tmp_path, two_epoch_run, monkeypatch):
    """--save_last_every S writes last.pth after the first epoch, then only when S seconds have passed, and after the
    last epoch; a crash resumes from the earlier last.pth and replays the epochs after it to the same weights."""
    saved = []
    original_call, original_finish = train.Saver.__call__, train.finish_epoch

    def record(self, name, state, loss, full=False):
        saved.append((name, state.epoch))
        return original_call(self, name, state, loss, full)

    def crash_after_epoch_2(save, state, loss):
        original_finish(save, state, loss)
        if state.epoch == 2:
            raise RuntimeError("crash")

    monkeypatch.setattr(train.Saver, "__call__", record)
    monkeypatch.setattr(train, "finish_epoch", crash_after_epoch_2)
    args = train_args(train_sets, tmp_path, "sparse", "--save_last_every", "3600")
    with pytest.raises(RuntimeError, match="crash"):
        train.main([*args, "--n_epoch", "3"])
    assert [s for s in saved if s[0] == "last.pth"] == [("last.pth", 1)]  # epoch 2's skipped: under an hour
    assert ("best.pth", 2) in saved or ("best.pth", 1) in saved
    monkeypatch.setattr(train, "finish_epoch", original_finish)
    saved.clear()
    state = train.main([*args, "--n_epoch", "2", "--resume"])  # replays epoch 2; the last epoch writes last.pth
    assert state.epoch == 2 and ("last.pth", 2) in saved
    a, b = heads_of(two_epoch_run / "last.pth"), heads_of(tmp_path / "sparse" / "last.pth")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    with pytest.raises(AHIQError, match=r"--save_last_every -1.0: .*at least 0"):
        train.main([*args, "--save_last_every", "-1"])


def test_the_log_names_the_model_and_best_pth_holds_the_validation_that_chose_it(train_sets, tmp_path):
    from tests.conftest import train_args
    from utils.checkpoint import load_checkpoint
    train.main(train_args(train_sets, tmp_path, "run", "--n_epoch", "2"))
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "model: patch_size 8, vit_name ahiq_tiny_vit_p8" in log and "crop_size 32, head_width 16" in log
    meta = load_checkpoint(str(tmp_path / "run" / "best.pth"))["ahiq"]
    best = meta["best_validation"]
    assert best["epoch"] == meta["epochs_trained"] and f"epoch {best['epoch']}: SRCC {best['srcc']:.4f}" in log


def test_a_compiled_training_forward_trains_as_the_eager_one(train_sets, tmp_path, monkeypatch):
    """--compile_mode: train.py compiles the model's forward in place (here through the aot_eager backend, the graph
    capture and autograd the GPU's inductor compiles); an epoch of fixed-shape steps (--drop_last) then gives the
    eager run's weights, and its checkpoint the same keys."""
    import torch.nn as nn

    from models import AHIQ
    modes = []

    def capture(self, **kwargs):
        modes.append(kwargs.pop("mode"))
        nn.Module.compile(self, backend="aot_eager", **kwargs)

    train.main(train_args(train_sets, tmp_path, "eager", "--n_epoch", "1", "--drop_last"))
    monkeypatch.setattr(AHIQ, "compile", capture, raising=False)
    torch._dynamo.utils.counters.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train.main(train_args(train_sets, tmp_path, "compiled", "--n_epoch", "1", "--drop_last", "--compile_mode",
                              "reduce-overhead"))
    assert modes == ["reduce-overhead"] and torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # one shape
    # traced without dynamo's "silent incorrectness" warning: models/deform.py's cached constants are made in the graph
    assert not [str(w.message) for w in caught if "lru_cache" in str(w.message)]
    torch._dynamo.reset()
    eager, compiled = (load_checkpoint(str(tmp_path / name / "last.pth")) for name in ("eager", "compiled"))
    for part in ("regressor_model_state_dict", "deform_net_model_state_dict"):
        assert list(compiled[part]) == list(eager[part])
        for key in eager[part]:
            torch.testing.assert_close(compiled[part][key], eager[part][key], rtol=1e-5, atol=1e-7)
