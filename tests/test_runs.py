"""Runs as researchers keep them: rerun from a saved configuration, the per-epoch metrics file (and its curves)
across a resume, validation scalars on the step axis named with the dataset, optional Weights & Biases."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import test as test_entry
import train
from options.train_options import parse_train_options
from tests.conftest import TINY_ARGS, heads_of, train_args
from utils.errors import AHIQError


def test_a_rerun_from_the_saved_configuration_gives_the_same_weights(train_sets, tmp_path):
    first = train.main(train_args(train_sets, tmp_path, "first", "--n_epoch", "1", "--learning_rate", "3e-4"))
    config = tmp_path / "first" / "opt_train.json"
    assert json.loads(config.read_text())["learning_rate"] == 3e-4
    again = train.main(["--config", str(config), "--name", "again"])  # the command line wins over the file
    assert again.global_step == first.global_step
    a, b = heads_of(tmp_path / "first" / "last.pth"), heads_of(tmp_path / "again" / "last.pth")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    v = train_sets["val"]
    out = test_entry.main(["--test_ref_path", v["ref"], "--test_dis_path", v["dis"], "--test_list", v["list"],
                         "--ckpt", str(tmp_path / "first" / "best.pth"), "--n_ensemble", "2", "--gpu_ids", "-1",
                         "--num_workers", "0", "--checkpoints_dir", str(tmp_path), "--name", "scored",
                         *TINY_ARGS])
    rerun = test_entry.main(["--config", str(tmp_path / "scored" / "opt_test.json"), "--test_file_name", "again.txt"])
    assert Path(rerun["predictions"]).name == "again.txt"
    assert Path(rerun["predictions"]).read_text() == Path(out["predictions"]).read_text()


def test_the_metrics_file_survives_a_resume_and_tensorboard_names_the_dataset(train_sets, tmp_path):
    args = train_args(train_sets, tmp_path, "logged")
    train.main(args + ["--n_epoch", "1"])
    run = tmp_path / "logged"
    with open(run / "metrics.jsonl", "a") as f:  # an epoch logged after the last checkpoint, then a torn line
        f.write(json.dumps({"epoch": 2, "train_loss": 9.0}) + "\n" + '{"epoch": 3, "tra')
    train.main(args + ["--n_epoch", "2", "--resume"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["train_loss"] != 9.0
    assert set(rows[0]) == {"epoch", "step", "train_loss", "lr", "val_srcc", "val_plcc", "val_plcc_logistic",
                            "val_krcc", "val_rmse", "val_main_score", "best", "step_ms",
                            "seconds"}  # every metric TensorBoard has
    assert 0 < rows[0]["step_ms"] * rows[0]["step"] / 1e3 <= rows[0]["seconds"]  # the training part of the epoch
    assert rows[0]["step"] == 5 and rows[1]["step"] == 10 and rows[1]["val_srcc"] is not None
    assert (run / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    # one step axis for training and validation; the data named as given (the validation list list.txt), not "pipal"
    assert sorted(e.step for e in events.Scalars("val/list/srcc")) == [5, 10]  # event files of one second: any order
    assert sorted(e.step for e in events.Scalars("val/list/main_score")) == [5, 10]
    assert not any(tag.startswith("val/pipal") for tag in events.Tags()["scalars"])


def test_wandb_mirrors_the_scalars_when_asked(train_sets, tmp_path, monkeypatch):
    logged, init = [], {}

    class Run:
        def log(self, values, step):
            logged.append((step, dict(values)))

        def finish(self):
            logged.append(("finished", {}))

    fake = types.SimpleNamespace(init=lambda **kw: init.update(kw) or Run())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train.main(train_args(train_sets, tmp_path, "wandb", "--n_epoch", "1", "--wandb", "ahiq-tests",
                                "--log_every", "2"))
    assert init["project"] == "ahiq-tests" and init["name"] == "wandb" and init["config"]["n_epoch"] == 1
    steps = [step for step, values in logged if "train/loss" in values]
    assert steps == [1, 3, 5] and any("val/list/srcc" in values for _, values in logged)
    assert logged[-1][0] == "finished"
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: refused with the options, before any work
    with pytest.raises(AHIQError, match="--wandb needs the wandb package: pip install wandb"):
        parse_train_options(train_args(train_sets, tmp_path, "nowandb", "--n_epoch", "1", "--wandb", "x"))
    assert not (tmp_path / "nowandb").exists()
