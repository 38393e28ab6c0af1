"""DataLoader workers end with the work: a training run, a validation and a scoring pass end their loaders' workers
on every path, and a process whose loader is still alive at exit (workers ignore SIGTERM, which Python's own exit
clean-up sends them) exits within seconds, killing a busy worker in one line."""
from __future__ import annotations

import multiprocessing
import sys
import textwrap

import pytest

import train
from engine.loop import ScoringStopped, predict
from engine.scorer import load_scorer
from tests.conftest import REPO, make_pipal_set, run_to_exit, train_args
from tests.test_distributed import _shell_env

SCRIPT = """
import sys, time
sys.path.insert(0, {repo!r})
import torch
from data.workers import make_loader

class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if {busy} and i >= 2:
            time.sleep(600)
        return i

loaders = []
if __name__ == "__main__":
    loader = make_loader(Data(), batch_size=2, num_workers=2, persistent_workers=True)
    loaders.append((loader, iter(loader)))
    next(loaders[0][1])
    print("work done", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_a_loader_alive_at_exit_does_not_hold_the_exit(tmp_path, busy):
    """Persistent workers with the project's worker set-up, the loader and its iterator referenced until the
    interpreter exits: without the exit guard the process waits for its workers forever (SIGTERM ignored)."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SCRIPT.format(repo=str(REPO), busy=busy)))
    log = tmp_path / "job.log"
    code, linger = run_to_exit([sys.executable, str(script)], log, _shell_env(), timeout=60)
    text = log.read_text()
    assert code == 0 and "work done" in text, text
    killed = "DataLoader worker process(es) still running at exit were killed" in text
    assert killed == busy, text  # idle workers end politely; a worker busy for minutes is killed, in one line
    assert linger < 3, f"exited {linger:.1f} s after its last line"
    assert text.count("\n") <= 2, text  # no traceback


def _children() -> set[int]:
    return {p.pid for p in multiprocessing.active_children() if p.is_alive()}


def test_a_stopped_scoring_pass_ends_its_workers(tmp_path, tiny_ckpt):
    """The stop's traceback keeps the pass's frame (and its iterator) alive as long as the exception is held: the
    workers must be ended by the pass itself, not by the garbage collector."""
    data = make_pipal_set(tmp_path / "set", n_refs=2, n_dis=3, size=(40, 40), seed=3)
    scorer = load_scorer(tiny_ckpt, str(tmp_path), pretrained=False, crop_size=32, n_ensemble=2)
    dataset = scorer.file_pairs([(f"{data['dis']}/{n}", f"{data['ref']}/{n[:5]}.bmp") for n in data["names"]])
    before = _children()
    with pytest.raises(ScoringStopped) as caught:
        predict(scorer.model, dataset, None, 1, 2, 4, progress=False, stop=lambda: True)
    assert caught.tb is not None and _children() == before
    predict(scorer.model, dataset, None, 2, 2, 4, progress=False)
    assert _children() == before


def test_a_stopped_training_run_ends_its_persistent_workers(train_sets, tmp_path, monkeypatch):
    """A stop after the first step (as SIGTERM asks): last.pth, exit code 3, and no worker left while the exit's
    traceback is still held; a finished run leaves none either."""
    def stop_now(loss, _stop, info):
        return train.__dict__["_reduce_step"](loss, True, info)

    monkeypatch.setitem(train.__dict__, "_reduce_step", train.reduce_step)
    monkeypatch.setattr(train, "reduce_step", stop_now)
    before = _children()
    with pytest.raises(SystemExit) as caught:
        train.main(train_args(train_sets, tmp_path, "run", "--n_epoch", "2", "--num_workers", "2"))
    assert caught.value.code == 3 and (tmp_path / "run" / "last.pth").is_file()
    assert _children() == before
    monkeypatch.undo()
    train.main(train_args(train_sets, tmp_path, "run", "--n_epoch", "1", "--num_workers", "2", "--resume"))
    assert _children() == before
