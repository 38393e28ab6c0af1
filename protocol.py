"""The evaluation protocol of FR-IQA papers: train and test on K content-disjoint seeded splits, report the median
and mean +- std of SRCC, PLCC and KRCC; optionally test every split's model on other datasets (cross-dataset).

    python protocol.py --dataset kadid10k --data_root datasets --name kadid_protocol --n_splits 10 \\
        --cross_dataset live csiq tid2013 [any train.py option]

Run folder ``{checkpoints_dir}/{name}``: ``splits.json`` (made once, reused), ``split_K/`` (a train.py run and its
test results), ``protocol_results.csv`` (one row per split and test set), ``protocol_summary.json`` and
``protocol_summary.txt`` (the table printed at the end). Running the same command again reuses finished splits,
resumes an interrupted one, and runs the missing ones: nothing is recomputed or overwritten.
"""
from __future__ import annotations

import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split

import csv
import io
import json
import logging
import math
import os

import numpy as np

import test as test_entry
import train as train_script
from data.splits import read_splits
from engine.runtime import device_of, save_options
from options.base_options import RunConfig, build
from options.data_options import PATH_DEFAULTS, apply_preset
from options.policy import RESULT, RESUMABLE
from options.protocol_options import parse_protocol_options
from options.test_options import TestConfig, test_parser
from utils.distributed import init_distributed
from utils.errors import AHIQError, run_cli
from utils.files import atomic_write, read_text

log = logging.getLogger("ahiq.protocol")
METRICS = ("srcc", "plcc", "krcc")
RESULTS_FILE = "test_results.txt"


def check_same_protocol(opt: RunConfig) -> None:
    """A protocol folder is continued only with the options that change results (policies RESULT and RESUMABLE) it
    was started with, so results are never mixed."""
    path = os.path.join(opt.run_dir, "opt_protocol.json")
    if not os.path.isfile(path):
        return
    try:
        before = json.loads(read_text(path))
    except ValueError as err:
        raise AHIQError(f"{path}: cannot be read as JSON ({err}); restore it, or choose another --name") from None
    if not isinstance(before, dict):
        raise AHIQError(f"{path}: not the options of a protocol run (a JSON object); choose another --name")
    now = opt.to_dict()
    diff = [k for k in opt.fields(RESULT, RESUMABLE) if k in before and before[k] != now[k]]
    if diff:
        shown = "; ".join(f"--{k} {before.get(k)!r} then, {now.get(k)!r} now" for k in diff[:4])
        raise AHIQError(f"{opt.run_dir}: holds a protocol run with other options ({shown}); choose another --name "
                        "to start a new one (nothing was changed)")


def split_options(opt: RunConfig, k: int) -> RunConfig:
    """train.py's options for split ``k``: its own run folder; --resume when an earlier attempt left last.pth."""
    name = f"{opt.name}/split_{k}"
    resume = os.path.isfile(os.path.join(opt.checkpoints_dir, name, "last.pth"))
    return opt.replace(name=name, split_index=k, resume=resume)


def test_options(train_opt: RunConfig, opt: RunConfig, cross: str | None) -> RunConfig:
    """test.py's options: every test.py option that training also has is copied, then the test set is set: the
    split's test part, or a whole other dataset (its preset resolved again)."""
    values = vars(test_parser().parse_args([]))
    values.update({key: getattr(train_opt, key) for key in set(values) & set(train_opt.to_dict())
                   if key not in ("batch_size", "ckpt", "load_epoch")})
    values.update(batch_size=opt.test_batch_size, n_ensemble=opt.n_ensemble)
    if cross is None:
        values.update(test_ref_path=train_opt.train_ref_path, test_dis_path=train_opt.train_dis_path,
                      test_list=train_opt.train_list, split_part="test", test_file_name=RESULTS_FILE)
        return build(TestConfig, values)
    root = opt.cross_data_root or opt.data_root
    if root is None:
        raise AHIQError("--cross_dataset needs --cross_data_root (or --data_root) to find its files")
    values.update(dataset=cross, data_root=root, list_format=None, label_direction=None, split_file=None,
                  split_column=None, split_part="all", test_file_name=f"cross_{cross}_results.txt",
                  **{key: PATH_DEFAULTS[key] for key in ("test_ref_path", "test_dis_path", "test_list")})
    return build(TestConfig, values, (apply_preset,))


def test_once(topt: RunConfig) -> dict:
    """test.py's metrics for these options; reused from an earlier run's metrics file when it is there."""
    metrics_path = test_entry.metrics_file(topt.run_dir, topt.test_file_name)
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            return json.load(f)
    result = test_entry.run(topt)
    if "srcc" not in result:
        raise AHIQError(f"{topt.test_list}: the test labels have no scores; the protocol needs them")
    return result


def drop_resume_files(run_dir: str) -> None:
    """A finished split's last.pth and epoch_N.pth (needed only to continue its training; best.pth stays)."""
    for name in os.listdir(run_dir):
        if name == "last.pth" or (name.startswith("epoch_") and name.endswith(".pth")):
            os.remove(os.path.join(run_dir, name))


def summarise(rows: list[dict]) -> dict:
    """Per test set: n, and median / mean / std (sample, n-1) of each metric over the splits."""
    summary: dict[str, dict] = {}
    for test_set in dict.fromkeys(r["test_set"] for r in rows):
        values = {m: np.asarray([r[m] for r in rows if r["test_set"] == test_set], np.float64) for m in METRICS}
        n = len(values[METRICS[0]])
        summary[test_set] = {"n": n, **{m: {"median": float(np.median(v)), "mean": float(np.mean(v)),
                                            "std": float(np.std(v, ddof=1)) if n > 1 else float("nan"),
                                            "values": [float(x) for x in v]} for m, v in values.items()}}
    return summary


def summary_table(summary: dict) -> str:
    def cell(s: dict) -> str:
        std = "-" if math.isnan(s["std"]) else f"{s['std']:.4f}"
        return f"{s['median']:.4f}  {s['mean']:.4f} +- {std}"

    width = max(len("test set"), *(len(k) for k in summary))
    head = f"{'test set'.ljust(width)}  runs  " + "  ".join(f"{m.upper()} median  mean +- std".ljust(26)
                                                          for m in METRICS)
    lines = [head, "-" * len(head)]
    for test_set, s in summary.items():
        lines.append(f"{test_set.ljust(width)}  {s['n']:>4}  " + "  ".join(cell(s[m]).ljust(26) for m in METRICS))
    return "\n".join(lines) + "\n"


def write_results(opt: RunConfig, rows: list[dict], summary: dict) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["split", "test_set", *METRICS, "rmse", "n_images", "checkpoint", "epoch"],
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(opt.run_dir, "protocol_results.csv"), buf.getvalue())
    doc = {"dataset": opt.dataset, "best_metric": opt.best_metric,
           "checkpoint": f"best.pth of each split: the epoch (counted from 1) --best_metric {opt.best_metric} chose",
           "split_file": opt.split_file, "split_column": opt.split_column,
           "n_splits": opt.n_splits, "std": "sample standard deviation (n-1)", "summary": summary}
    atomic_write(os.path.join(opt.run_dir, "protocol_summary.json"), json.dumps(doc, indent=2) + "\n")
    atomic_write(os.path.join(opt.run_dir, "protocol_summary.txt"), summary_table(summary))


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = parse_protocol_options(argv)
    info = init_distributed(device_of(opt), opt.gpu_list)
    if info.enabled:
        raise AHIQError("protocol.py runs in one process; start it with python, not torchrun")
    check_same_protocol(opt)
    if opt.split_file and os.path.exists(opt.split_file):
        held = len(read_splits(opt.split_file)["splits"])
        if held < opt.n_splits:
            raise AHIQError(f"{opt.split_file}: holds {held} splits, --n_splits asks for {opt.n_splits}; pass "
                            f"--n_splits {held} or a new --split_file")
    save_options(opt, "protocol")
    rows = []
    for k in range(opt.n_splits):
        sub = split_options(opt, k)
        done = os.path.isfile(test_entry.metrics_file(sub.run_dir, RESULTS_FILE))
        if not done:
            log.info("split %d/%d: training in %s%s", k + 1, opt.n_splits, sub.run_dir,
                     " (resuming)" if sub.resume else "")
            train_script.run(sub, info)
        tests = [(f"{opt.dataset} (test part)", test_options(sub, opt, None))]
        tests += [(f"{cross} (all)", test_options(sub, opt, cross)) for cross in opt.cross_dataset]
        for test_set, topt in tests:
            metrics = test_once(topt)
            rows.append({"split": k, "test_set": test_set, **{m: metrics[m] for m in (*METRICS, "rmse")},
                         "n_images": metrics.get("n_images"), "checkpoint": metrics.get("checkpoint"),
                         "epoch": (metrics.get("trained") or {}).get("epochs_trained")})
        write_results(opt, rows, summarise(rows))  # after every split, so an interrupted protocol keeps its results
        if opt.keep == "best":
            drop_resume_files(sub.run_dir)
    summary = summarise(rows)
    table = summary_table(summary)
    print(f"\n{opt.dataset}: {opt.n_splits} split(s) of {opt.split_file or 'column ' + opt.split_column}\n{table}")
    print(f"per split: {os.path.join(opt.run_dir, 'protocol_results.csv')}; summary: "
          f"{os.path.join(opt.run_dir, 'protocol_summary.json')}")
    return summary


if __name__ == "__main__":
    run_cli(main)
