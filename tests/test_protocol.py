"""End to end on tiny generated datasets: train.py and test.py on a pyiqa-style CSV set of non-square images with a
split file, DMOS label normalisation in checkpoints, too-small images, and the protocol runner with K=2 splits and
a cross-dataset test."""
from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time

import numpy as np
import pytest
import torch

import protocol
import test as test_script
import train
from engine.scorer import load_scorer
from tests.conftest import TINY_ARGS, make_fr_dataset, run_to_exit
from tests.forks import Forked
from tests.test_distributed import _shell_env
from utils.errors import AHIQError


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    make_fr_dataset(root, "kadid10k", n_refs=5, n_dis=3, size=(40, 56), seed=1)
    make_fr_dataset(root, "csiq", n_refs=2, n_dis=3, size=(48, 40), seed=2)
    return root


def _common(ckpts, *extra) -> list[str]:
    return [*TINY_ARGS,
            "--checkpoints_dir", str(ckpts), "--crop_size", "32", "--gpu_ids", "-1", "--num_workers", "0",
            "--num_avg_val", "2", *extra]


def test_csv_dataset_of_non_square_images_trains_and_tests_on_its_split(data_root, tmp_path):
    split_file = tmp_path / "kadid_splits.json"
    data = ["--dataset", "kadid10k", "--data_root", str(data_root), "--split_file", str(split_file)]
    train.main(_common(tmp_path, "--name", "csv", "--n_epoch", "1", "--batch_size", "3", *data))
    splits = json.loads(split_file.read_text())["splits"]
    assert [len(splits[0][p]) for p in ("train", "val", "test")] == [3, 1, 1]
    result = test_script.main(_common(tmp_path, "--name", "csv", "--n_ensemble", "3", "--report", *data))
    lines = (tmp_path / "csv" / "results.txt").read_text().splitlines()
    test_ref = splits[0]["test"][0]  # 'I0r.png': its three distorted images, in label-file order
    assert [line.split(",")[0] for line in lines] == [f"{test_ref[:-4]}_01_{d:02d}.png" for d in (1, 2, 3)]
    assert result["n_images"] == 3 and np.isfinite(result["srcc"])
    metrics = json.loads((tmp_path / "csv" / "results_metrics.json").read_text())
    described = f"split 0 of {split_file}, part test"  # the part used without --split_part: named everywhere
    assert metrics["split"] == {"file": str(split_file), "index": 0, "column": None, "part": "test",
                                "described": described}
    assert described in (tmp_path / "csv" / "results_report.html").read_text()
    val = test_script.main(_common(tmp_path, "--name", "csv", "--n_ensemble", "3", "--report", "--split_part", "val",
                                   "--test_file_name", "val.txt", *data))
    assert val["n_images"] == 3
    metrics = json.loads((tmp_path / "csv" / "val_metrics.json").read_text())
    assert metrics["split"]["part"] == "val" and "part val" in (tmp_path / "csv" / "val_report.html").read_text()
    # validation used the val part: the log names the split and three validation pairs
    assert "validating on 3 (split 0 of" in (tmp_path / "csv" / "log.txt").read_text()
    # test.py never makes a split file: a mistyped path would test on a split the model may have trained on
    wrong = [*data[:-1], str(tmp_path / "typo.json")]
    with pytest.raises(AHIQError, match=r"typo\.json: split file not found"):
        test_script.main(_common(tmp_path, "--name", "csv", *wrong))
    assert not (tmp_path / "typo.json").exists()


def test_dmos_training_stores_its_label_normalisation(data_root, tmp_path):
    data = ["--dataset", "csiq", "--data_root", str(data_root), "--split_file", str(tmp_path / "s.json"),
            "--split_ratios", "1,1,0"]
    train.main(_common(tmp_path, "--name", "dmos", "--n_epoch", "1", "--batch_size", "3", *data))
    meta = torch.load(tmp_path / "dmos" / "last.pth", weights_only=True)["ahiq"]
    labels = list(csv.DictReader(open(data_root / "meta_info" / "meta_info_CSIQDataset.csv")))
    train_ref = json.loads((tmp_path / "s.json").read_text())["splits"][0]["train"]
    dmos = [float(r["dmos"]) for r in labels if r["ref_name"] in train_ref]
    assert meta["label_norm"] == {"method": "minmax", "mos_min": min(dmos), "mos_max": max(dmos), "lower_better": True}
    scorer = load_scorer(str(tmp_path / "dmos" / "last.pth"), pretrained=False)
    assert scorer.labels_are_dmos
    np.testing.assert_allclose(scorer.to_mos(np.array([0.0, 1.0])), [max(dmos), min(dmos)])  # best = lowest DMOS


def test_images_smaller_than_the_crop_need_resize(data_root, tmp_path):
    data = ["--dataset", "kadid10k", "--data_root", str(data_root), "--split_file", str(tmp_path / "s.json")]
    args = _common(tmp_path, "--name", "small", "--n_epoch", "1", *data)
    with pytest.raises(AHIQError, match=r"I0\d_01_0\d\.png: 56x40 is smaller than crop_size 48; score it resized"):
        train.main([*args, "--crop_size", "48"])
    assert not (tmp_path / "small" / "last.pth").exists()
    state = train.main([*args, "--crop_size", "48", "--resize", "--size", "48", "--name", "resized"])
    assert state.epoch == 1


def test_same_list_for_training_and_validation_without_a_split_is_refused(data_root, tmp_path):
    with pytest.raises(AHIQError, match="training and validation would use the same images"):
        train.main(_common(tmp_path, "--name", "x", "--dataset", "kadid10k", "--data_root",
                           str(data_root)))


def test_protocol_runner_two_splits_with_a_cross_dataset_test(data_root, tmp_path, capsys):
    args = _common(tmp_path, "--name", "proto", "--dataset", "kadid10k", "--data_root",
                   str(data_root), "--n_splits", "2", "--n_epoch", "1", "--batch_size", "3", "--n_ensemble", "2",
                   "--cross_dataset", "csiq", "--report")
    summary = protocol.main(args)
    run = tmp_path / "proto"
    rows = list(csv.DictReader(open(run / "protocol_results.csv")))
    assert [(r["split"], r["test_set"]) for r in rows] == [
        ("0", "kadid10k (test part)"), ("0", "csiq (all)"), ("1", "kadid10k (test part)"), ("1", "csiq (all)")]
    assert [int(r["n_images"]) for r in rows] == [3, 6, 3, 6]
    splits = json.loads((run / "splits.json").read_text())["splits"]
    assert splits[0]["test"] != splits[1]["test"]
    for k in (0, 1):  # each split was tested on its own held-out references only
        names = [line.split(",")[0] for line in (run / f"split_{k}" / "test_results.txt").read_text().splitlines()]
        assert {n[:3] + ".png" for n in names} == set(splits[k]["test"])
        assert not set(splits[k]["train"]) & set(splits[k]["test"])
    for test_set, s in summary.items():
        srcc = [float(r["srcc"]) for r in rows if r["test_set"] == test_set]
        assert s["n"] == 2 and s["srcc"]["median"] == pytest.approx(np.median(srcc))
        assert s["srcc"]["mean"] == pytest.approx(np.mean(srcc))
        assert s["srcc"]["std"] == pytest.approx(np.std(srcc, ddof=1))
    saved = json.loads((run / "protocol_summary.json").read_text())["summary"]
    assert saved["csiq (all)"]["plcc"]["values"] == summary["csiq (all)"]["plcc"]["values"]
    assert "kadid10k (test part)" in capsys.readouterr().out
    # per distortion group: the median over splits of each split's own per-group numbers (test.py's metrics files)
    groups = json.loads((run / "protocol_summary.json").read_text())["groups"]
    per_split = [json.loads((run / f"split_{k}" / "cross_csiq_results_metrics.json").read_text())["by_type"]
                 for k in (0, 1)]
    for name, g in groups["csiq (all)"]["by_type"].items():
        measured = [s[name]["srcc"] for s in per_split if s[name]["srcc"] is not None]
        assert g["splits"] == len(measured) and g["images_per_split"] == [s[name]["n"] for s in per_split]
        assert g["srcc_median"] == (pytest.approx(np.median(measured)) if measured else None)
    assert any(g["splits"] for g in groups["csiq (all)"]["by_type"].values())
    page = (run / "protocol_report.html").read_text()
    assert "Per distortion group, csiq (all)" in page and page.count("<tr>") > 4 + 4 and "RANDOM BACKBONES" in page
    assert (run / "split_1" / "test_results_report.html").is_file()  # each split's own report, linked
    assert 'href="split_1/test_results_report.html"' in page and 'href="split_0/cross_csiq_results_report.html"' in page
    # a finished split keeps best.pth only (--keep best): last.pth and epoch_N.pth serve only to resume its training
    assert sorted(p.name for p in (run / "split_0").glob("*.pth")) == ["best.pth"]
    # running it again reuses every finished split: nothing is trained or rewritten
    stamps = {p: os.stat(p).st_mtime_ns for p in run.glob("split_*/*.pth")}
    assert protocol.main(args) == summary
    assert {p: os.stat(p).st_mtime_ns for p in run.glob("split_*/*.pth")} == stamps
    with pytest.raises(AHIQError, match="holds a protocol run with other options"):
        protocol.main([*args, "--n_epoch", "2"])


@pytest.mark.slow
def test_protocol_py_with_workers_exits_when_its_splits_are_done(data_root, tmp_path):
    """protocol.py trains and tests its splits in one process, each with DataLoader workers (which ignore SIGTERM):
    every loader's workers end with its run, and the process exits within seconds of its last line."""
    log = tmp_path / "protocol.log"
    args = _common(tmp_path, "--name", "proto", "--dataset", "kadid10k", "--data_root", str(data_root),
                   "--n_splits", "2", "--n_epoch", "1", "--batch_size", "3", "--n_ensemble", "2", "--num_workers", "2")
    code, linger = run_to_exit([sys.executable, "protocol.py", *args], log, _shell_env())
    assert code == 0 and (tmp_path / "proto" / "protocol_summary.json").is_file(), log.read_text()[-3000:]
    assert linger < 5, f"exited {linger:.1f} s after its last line"


def test_an_ablation_trains_the_baseline_and_each_variant_on_the_same_splits(data_root, tmp_path, capsys):
    """protocol.py --vary: the baseline and each variant on the same splits, each in its own folder with its
    configuration in its checkpoints; the table (ablation.json/.md) pairs the splits; a rerun reuses everything; an
    unknown key is refused before anything runs."""
    from utils.checkpoint import load_checkpoint, meta_of
    args = _common(tmp_path, "--name", "abl", "--dataset", "kadid10k", "--data_root", str(data_root), "--n_splits",
                   "2", "--n_epoch", "1", "--batch_size", "3", "--n_ensemble", "2", "--vary", "fusion=conv")
    with pytest.raises(AHIQError, match=r"--vary 'gpu_ids=1': give KEY=V1\[,V2...\] with KEY a model or training"):
        protocol.main([*args, "--vary", "gpu_ids=1"])
    assert not (tmp_path / "abl").exists()
    doc = protocol.main(args)
    run = tmp_path / "abl"
    import logging  # each run's log.txt is detached when it ends: nothing later lands in the last split's log
    assert not [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for variant, fusion in (("baseline", "deform"), ("fusion=conv", "conv")):
        for k in (0, 1):
            assert meta_of(load_checkpoint(str(run / variant / f"split_{k}" / "best.pth")))["model"]["fusion"] == fusion
    assert json.loads((run / "baseline" / "split_0" / "opt_train.json").read_text())["split_file"] == \
        json.loads((run / "fusion=conv" / "split_0" / "opt_train.json").read_text())["split_file"] == \
        str(run / "splits.json")  # the same splits
    table = doc["table"]["kadid10k (test part)"]
    rows = list(csv.DictReader(open(run / "fusion=conv" / "protocol_results.csv")))
    base = list(csv.DictReader(open(run / "baseline" / "protocol_results.csv")))
    diffs = [float(r["srcc"]) - float(b["srcc"]) for r, b in zip(rows, base)]
    conv = table["fusion=conv"]["srcc"]
    assert conv["pairs"] == 2 and conv["diff_mean"] == pytest.approx(np.mean(diffs))
    assert conv["higher_in"] == sum(d > 0 for d in diffs) and "diff_mean" not in table["baseline"]["srcc"]
    assert json.loads((run / "ablation.json").read_text())["table"] == doc["table"]
    # per split, tools.compare's test on the same images: each split's 3 test images, too few for Williams' test
    # (it needs 4), which says so with null rather than a number
    same = table["fusion=conv"]["same_images"]
    assert [(t["split"], t["n"], t["srcc_williams_p"]) for t in same] == [(0, 3, None), (1, 3, None)]
    assert "Williams' test against the baseline" in (run / "ablation.md").read_text()
    assert "| fusion=conv |" in (run / "ablation.md").read_text()
    assert not (run / "ablation_report.html").exists()  # only with --report
    stamps = {p: os.stat(p).st_mtime_ns for p in run.glob("*/split_*/*.pth")}
    assert protocol.main(args)["table"] == doc["table"]  # a rerun: nothing trained again
    assert {p: os.stat(p).st_mtime_ns for p in run.glob("*/split_*/*.pth")} == stamps


SBATCH = """#!/bin/sh
# stand-in sbatch: keeps the script it is given, answers with a job id
n=$(cat "$FAKE_SLURM/next" 2>/dev/null || echo 4242)
echo $((n + 1)) > "$FAKE_SLURM/next"
for last; do :; done
cp "$last" "$FAKE_SLURM/job_$n.sh"
echo "Submitted batch job $n"
"""
SACCT = """#!/bin/sh
# stand-in sacct: every job asked for is in the state $FAKE_SLURM/state holds
state=$(cat "$FAKE_SLURM/state")
echo "JobID|State|NodeList"
for arg; do case $arg in -j) take=1 ;; *) [ "$take" = 1 ] && for id in $(echo "$arg" | tr , ' '); do
  echo "$id|$state|node1"; done; take=0 ;; esac; done
"""


def test_an_ablation_on_slurm_through_submitit(data_root, tmp_path, monkeypatch, capsys):
    """--launcher slurm against a stand-in sbatch/sacct/srun: one job per variant and split with the signal, GPUs,
    time, partition, account and extra options asked for; the same command again submits nothing while the jobs
    run, resubmits a failed one, and once the jobs have run (here: their pickled calls, as submitit runs them)
    writes the table the local launcher writes."""
    submitit = pytest.importorskip("submitit", reason="an optional extra (requirements-slurm.txt)")
    fake = tmp_path / "slurm_bin"
    fake.mkdir()
    for name, text in (("sbatch", SBATCH), ("sacct", SACCT), ("srun", "#!/bin/sh\nexit 1\n")):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(fake))
    (fake / "state").write_text("RUNNING")
    args = _common(tmp_path, "--name", "abl", "--dataset", "kadid10k", "--data_root", str(data_root), "--n_splits",
                   "2", "--n_epoch", "1", "--batch_size", "3", "--n_ensemble", "2", "--vary", "fusion=conv",
                   "--launcher", "slurm", "--slurm_partition", "gpu", "--slurm_time", "90", "--slurm_account", "lab",
                   "--slurm_opt", "qos=high")
    out = protocol.main(args)
    assert sorted(out["pending"]) == ["baseline/split_0", "baseline/split_1", "fusion=conv/split_0",
                                      "fusion=conv/split_1"]
    scripts = sorted(fake.glob("job_*.sh"))
    assert len(scripts) == 4
    text = scripts[0].read_text()
    for line in ("#SBATCH --signal=USR2@120", "#SBATCH --gpus-per-node=1", "#SBATCH --time=90",
                 "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --qos=high",
                 f"export PYTHONPATH={protocol.REPO}"):
        assert line in text, (line, text)
    assert protocol.main(args)["pending"] and len(list(fake.glob("job_*.sh"))) == 4  # running: nothing submitted
    assert "running (job 4242)" in capsys.readouterr().out
    (fake / "state").write_text("FAILED")
    protocol.main(args)
    assert len(list(fake.glob("job_*.sh"))) == 8  # failed: each submitted again
    run = tmp_path / "abl"
    record = json.loads((run / "slurm_jobs.json").read_text())
    for job_id in record.values():  # run the jobs as submitit would, from what was submitted (on this CPU)
        job = submitit.core.utils.DelayedSubmission.load(run / "slurm" / job_id / f"{job_id}_submitted.pkl")
        assert job.function.values["gpu_ids"] == "0"  # the job's own GPU, where SLURM gives one
        job.function.values["gpu_ids"] = "-1"
        again = job.function.checkpoint()  # preempted or out of time: requeued as the same split, from last.pth
        assert (again.function.values, again.function.k) == (job.function.values, job.function.k)
        job.result()
    doc = protocol.main([*args, "--report"])  # everything finished: the tables (and the page)
    assert set(doc["table"]["kadid10k (test part)"]) == {"baseline", "fusion=conv"}
    assert (run / "ablation.md").is_file()
    page = (run / "ablation_report.html").read_text()
    assert 'href="fusion=conv/protocol_report.html"' in page
    assert (run / "fusion=conv" / "protocol_report.html").is_file()


def _rows(srcc: list[float], by_type: list[dict]) -> list[dict]:
    """protocol rows of one test set, one per split: the metrics and the per-type SRCC (None: too few images)."""
    return [{"split": k, "test_set": "kadid10k (test part)", "srcc": s, "plcc": s, "krcc": s,
             "groups": {"by_type": {code: {"srcc": v, "plcc": v, "name": "blur" if code == "01" else None}
                                    for code, v in g.items()}}} for k, (s, g) in enumerate(zip(srcc, by_type))]


def test_the_ablation_table_compares_each_distortion_type_over_the_same_splits(tmp_path):
    """Per distortion type: the variant's median SRCC over the splits that measured it, and against the baseline the
    mean per-split difference, the splits where it is higher and a paired t-test, over the splits both measured."""
    from types import SimpleNamespace

    from scipy import stats
    opt = SimpleNamespace(run_dir=str(tmp_path), vary=("fusion=conv",), factorial=False, split_file="s.json",
                          n_splits=3, report=True, dataset="kadid10k", name="abl")
    base = _rows([0.8, 0.7, 0.9], [{"01": 0.5, "02": 0.6}, {"01": 0.4, "02": None}, {"01": 0.7, "02": 0.2}])
    conv = _rows([0.7, 0.75, 0.8], [{"01": 0.6, "02": 0.5}, {"01": 0.45, "02": 0.3}, {"01": 0.65, "02": 0.1}])
    doc = protocol.write_ablation(opt, {"baseline": base, "fusion=conv": conv})
    groups = doc["table"]["kadid10k (test part)"]["fusion=conv"]["groups"]["by_type"]
    blur = groups["01 (blur)"]
    assert blur["srcc_median"] == pytest.approx(0.6) and blur["splits"] == 3 and blur["pairs"] == 3
    assert blur["diff_mean"] == pytest.approx(np.mean([0.1, 0.05, -0.05])) and blur["higher_in"] == 2
    assert blur["p_paired_t"] == pytest.approx(stats.ttest_rel([0.6, 0.45, 0.65], [0.5, 0.4, 0.7]).pvalue)
    other = groups["02"]  # split 1: the baseline measured nothing there, so it is not paired
    assert other["splits"] == 3 and other["pairs"] == 2 and other["diff_mean"] == pytest.approx(-0.1)
    assert other["direction"] == "lower" and other["higher_in"] == 0
    assert other["p_paired_t"] is None  # both differences -0.1 (to float rounding): no spread, no test
    whole = doc["table"]["kadid10k (test part)"]["fusion=conv"]["srcc"]
    assert whole["diff_mean"] == pytest.approx(np.mean([-0.1, 0.05, -0.1])) and whole["direction"] == "lower"
    text = (tmp_path / "ablation.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 01 (blur) |"))
    assert "0.5000 (3)" in row and "0.6000 (3); +0.0333, higher in 2/3" in row
    assert "per distortion group" in (tmp_path / "ablation_report.html").read_text()


@pytest.mark.slow
def test_parallel_splits_stopped_by_sigterm_continue_where_they_stopped(data_root, tmp_path):
    """--parallel 2: two splits train at once, each in its own process with its console in logs/; SIGTERM to
    protocol.py reaches both (each saves last.pth), exit code 3; the command again (here without --parallel)
    continues them from last.pth and writes the table; a third run reuses everything."""
    args = _common(tmp_path, "--name", "par", "--dataset", "kadid10k", "--data_root", str(data_root), "--n_splits",
                   "1", "--n_epoch", "3", "--batch_size", "3", "--n_ensemble", "2", "--vary", "fusion=conv",
                   "--parallel", "2")
    run = tmp_path / "par"
    log = tmp_path / "par.log"
    proc = Forked("protocol", args, log)  # protocol.py forked from this process (tests/forks.py)
    consoles = [run / "logs" / "baseline_split_0.txt", run / "logs" / "fusion=conv_split_0.txt"]
    deadline = time.time() + 240
    while not all(c.is_file() and "loss=" in c.read_text() for c in consoles) and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=240) == 3, log.read_text()[-3000:]
    assert "run the same command again to continue" in log.read_text()
    stopped = [v for v in ("baseline", "fusion=conv") if (run / v / "split_0" / "last.pth").is_file()]
    assert stopped, [c.read_text()[-2000:] for c in consoles]  # at least one was stopped while it trained
    doc = protocol.main(args[:-2])  # continued in this process, one split after the other (--parallel is free)
    for v in stopped:
        assert "resum" in (run / v / "split_0" / "log.txt").read_text()
    assert set(doc["table"]["kadid10k (test part)"]) == {"baseline", "fusion=conv"}
    stamps = {p: os.stat(p).st_mtime_ns for p in run.glob("*/split_*/*.pth")}
    assert protocol.main(args)["table"] == doc["table"] and \
        {p: os.stat(p).st_mtime_ns for p in run.glob("*/split_*/*.pth")} == stamps


def test_a_split_job_of_two_tasks_trains_and_tests_in_one_process_group(data_root, tmp_path):
    """A SLURM job of two tasks (--slurm_gpus 2) as submitit's own LocalExecutor runs it: both tasks join one gloo
    group from submitit's variables, train the split with DDP and share its tests; rank 0 writes the results."""
    submitit = pytest.importorskip("submitit", reason="an optional extra (requirements-slurm.txt)")
    opt = protocol.parse_protocol_options(_common(tmp_path, "--name", "job", "--dataset", "kadid10k", "--data_root",
                                                  str(data_root), "--n_splits", "1", "--n_epoch", "1",
                                                  "--batch_size", "2", "--n_ensemble", "2"))
    executor = submitit.LocalExecutor(folder=str(tmp_path / "submitit"))
    executor.update_parameters(tasks_per_node=2, timeout_min=5)
    job = executor.submit(protocol.SplitJob(opt.to_dict(), 0))
    try:
        results = job.results()
    except Exception:
        raise AssertionError(job.stderr()) from None
    assert results[0] == str(tmp_path / "job" / "split_0")
    text = (tmp_path / "job" / "split_0" / "log.txt").read_text()
    assert "2 process(es) on cpu, DDP over gloo" in text, text[-2000:]
    assert "2 processes" in job.stderr() + job.stdout()  # the tests' scoring job shared too
    assert protocol.split_done(opt, 0)
