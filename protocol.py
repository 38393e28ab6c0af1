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
import glob
import importlib
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import shlex
import sys
import warnings

import numpy as np

import test as test_entry
import train as train_script
from data.datasets import read_labels, select_rows
from data.label_norm import LabelNorm
from data.pipal import read_list
from data.splits import read_splits
from engine.runtime import device_of, process_group, save_options
from options.base_options import build, defaults_of, options_of
from options.data_options import PATH_DEFAULTS, apply_preset
from options.policy import RESULT, RESUMABLE
from options.protocol_options import ProtocolConfig, parse_protocol_options
from options.test_options import TestConfig
from options.train_options import TrainConfig, check_train_options
from utils import report
from utils.distributed import DistInfo, barrier, init_distributed
from utils.errors import AHIQError, StopRequest, run_cli
from utils.files import atomic_write, read_json, read_text
from utils.records import require_same
from utils.stats import compare_models

log = logging.getLogger("ahiq.protocol")
METRICS = ("srcc", "plcc", "krcc")
# one row of protocol_results.csv and the report's per-split table
ROW = ("split", "test_set", *METRICS, "rmse", "rmse_mapped", "outlier_ratio", "n_images", "epoch", "checkpoint")
RESULTS_FILE = "test_results.txt"
REPO = os.path.dirname(os.path.abspath(__file__))


def check_same_protocol(opt: ProtocolConfig) -> None:
    """A protocol folder is continued only with the options that change results (policies RESULT and RESUMABLE) it
    was started with, so results are never mixed."""
    path = os.path.join(opt.run_dir, "opt_protocol.json")
    if not os.path.isfile(path):
        return
    before = read_json(path, "the options of a protocol run", "restore it, or choose another --name")
    require_same({"options": before}, {"options": opt.values(RESULT, RESUMABLE)}, opt.run_dir,
                 "holds a protocol run with other options",
                 "choose another --name to start a new one (nothing was changed)")


def split_options(opt: ProtocolConfig, k: int) -> ProtocolConfig:
    """train.py's options for split ``k``: its own run folder; --resume when an earlier attempt left last.pth."""
    name = f"{opt.name}/split_{k}"
    resume = os.path.isfile(os.path.join(opt.checkpoints_dir, name, "last.pth"))
    return opt.replace(name=name, split_index=k, resume=resume)


def test_options(train_opt: TrainConfig, opt: ProtocolConfig, cross: str | None) -> TestConfig:
    """test.py's options: every test.py option that training also has is copied, then the test set is set: the
    split's test part, or a whole other dataset (its preset resolved again)."""
    values = defaults_of(TestConfig)
    values.update({key: getattr(train_opt, key) for key in set(values) & set(train_opt.to_dict())
                   if key not in ("batch_size", "ckpt", "load_epoch")})
    values.update(batch_size=opt.test_batch_size, n_ensemble=opt.n_ensemble, report=opt.report)
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


def test_once(topt: TestConfig, info: DistInfo) -> dict:
    """test.py's metrics for these options (rank 0 of a job of several processes; the others: {}); reused from an
    earlier run's metrics file when it is there."""
    metrics_path = test_entry.metrics_file(topt.run_dir, topt.test_file_name)
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            return json.load(f)
    result = test_entry.run(topt)
    if info.is_main and "srcc" not in result:
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


def group_rows(rows: list[dict], test_set: str) -> dict[str, dict[str, dict[int, dict]]]:
    """Per grouping (``by_type``, ...) and group code of one test set: each split's metrics of that group (test.py's
    ``by_*`` entries, which the rows carry)."""
    out: dict[str, dict[str, dict[int, dict]]] = {}
    for r in rows:
        if r["test_set"] == test_set:
            for key, groups in r["groups"].items():
                for code, g in groups.items():
                    out.setdefault(key, {}).setdefault(code, {})[r["split"]] = g
    return out


def group_summary(rows: list[dict]) -> dict:
    """Per test set and grouping (``by_type``, ``by_level``, ...): per group, the median SRCC and PLCC over the
    splits whose test part held enough of its images for a correlation (``splits``: how many), and its images per
    split. A group no split could measure is listed with None."""
    summary: dict[str, dict] = {}
    for test_set in dict.fromkeys(r["test_set"] for r in rows):
        for key, groups in group_rows(rows, test_set).items():
            for code, by_split in sorted(groups.items()):
                measured = [g for g in by_split.values() if g.get("srcc") is not None]
                summary.setdefault(test_set, {}).setdefault(key, {})[code] = {
                    "splits": len(measured), "images_per_split": [g.get("n") for g in by_split.values()],
                    **{f"{m}_median": float(np.median([g[m] for g in measured])) if measured else None
                       for m in ("srcc", "plcc")}}
    return summary


def write_report(opt: ProtocolConfig, rows: list[dict], summary: dict) -> str:
    """``protocol_report.html``: the summary, every split's numbers (sortable) and the per-group medians."""
    groups = group_summary(rows)

    def stats(s: dict) -> list:
        return [v for m in METRICS for v in (s[m]["median"], s[m]["mean"], s[m]["std"])]

    head = ["test set", "runs", *(f"{m.upper()} {w}" for m in METRICS for w in ("median", "mean", "std"))]
    sections = [("Summary", report.table(head, [(t, s["n"], *stats(s)) for t, s in summary.items()])
                 + f'<p class="muted">{opt.n_splits} content-disjoint split(s) of '
                   f"{report.esc(opt.split_file or 'column ' + str(opt.split_column))}; each split's best.pth "
                   f"(--best_metric {report.esc(opt.best_metric)}); std: sample (n-1).</p>"),
                ("Per split", report.table([k.replace("_", " ") for k in ROW], [[r[k] for k in ROW] for r in rows],
                                           sortable=True))]
    reports = sorted(glob.glob(os.path.join(opt.run_dir, "split_*", "*_report.html")))
    if reports:  # each split's own test report, linked relative to this page
        links = " ".join(f'<a href="{report.esc(os.path.relpath(r, opt.run_dir))}">'
                         f"{report.esc(os.path.relpath(r, opt.run_dir))}</a>" for r in reports)
        sections.append(("Each split's test report", f"<p>{links}</p>"))
    for test_set, keys in groups.items():
        tables = {key: {name: {"n": g["splits"], "srcc": g["srcc_median"], "plcc": g["plcc_median"],
                               "note": None if g["splits"] else "too few images in every split"}
                        for name, g in gs.items()} for key, gs in keys.items()}
        sections.append((f"Per distortion group, {test_set}: medians over splits",
                         report.group_tables(tables, count="splits measured")))
    path = os.path.join(opt.run_dir, "protocol_report.html")
    warning = next(filter(None, (r["warning"] for r in rows)), None)  # test.py's, if any
    atomic_write(path, report.page(f"AHIQ protocol on {opt.dataset}: {opt.name}", warning, sections))
    return path


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


def write_results(opt: ProtocolConfig, rows: list[dict], summary: dict, groups: dict) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROW, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(opt.run_dir, "protocol_results.csv"), buf.getvalue())
    doc = {"dataset": opt.dataset, "best_metric": opt.best_metric,
           "checkpoint": f"best.pth of each split: the epoch (counted from 1) --best_metric {opt.best_metric} chose",
           "split_file": opt.split_file, "split_column": opt.split_column,
           "n_splits": opt.n_splits, "std": "sample standard deviation (n-1)", "summary": summary,
           "groups": groups}
    atomic_write(os.path.join(opt.run_dir, "protocol_summary.json"), json.dumps(doc, indent=2) + "\n")
    atomic_write(os.path.join(opt.run_dir, "protocol_summary.txt"), summary_table(summary))


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = parse_protocol_options(argv)
    variants = ablation_variants(opt)  # an unknown key or value is refused before anything runs
    info = init_distributed(device_of(opt), opt.gpu_list)
    if info.enabled:
        raise AHIQError("protocol.py runs in one process; start it with python, not torchrun")
    runs = variants or [("", opt)]
    if opt.launcher == "slurm":
        pending = submit_or_collect(opt, runs)
        if pending:
            return {"pending": pending}
    elif opt.parallel > 1:
        run_parallel(opt, runs)  # then the tables below, from the finished runs
    if not variants:
        return run_protocol(opt, info)[0]
    results = {label: run_protocol(vopt, info)[1] for label, vopt in variants}
    return write_ablation(opt, results, dict(variants))


def run_split(opt: ProtocolConfig, k: int, info: DistInfo) -> tuple[str, list[tuple[str, dict]]]:
    """Split ``k``: trained (resumed when an earlier attempt left last.pth; skipped when it was tested already) and
    tested on each test set (a metrics file already there is kept); its run folder and each test set's metrics. The
    one body of a split, run here (``--launcher local``) or as a SLURM job (:class:`SplitJob`)."""
    sub = split_options(opt, k)
    if not os.path.isfile(test_entry.metrics_file(sub.run_dir, RESULTS_FILE)):
        log.info("split %d/%d: training in %s%s", k + 1, opt.n_splits, sub.run_dir, " (resuming)" if sub.resume else "")
        train_script.run(sub, info)
        barrier(info)  # rank 0 may still be writing best.pth, which every rank's tests load
    tested = [(test_set, test_once(topt, info)) for test_set, topt in split_tests(opt, sub)]
    if opt.keep == "best" and info.is_main:
        drop_resume_files(sub.run_dir)
    return sub.run_dir, tested


def split_done(opt: ProtocolConfig, k: int) -> bool:
    """Split ``k`` of ``opt`` is trained and every test set of it scored (its metrics files are there)."""
    sub = split_options(opt, k)
    return all(os.path.isfile(test_entry.metrics_file(sub.run_dir, topt.test_file_name))
               for _, topt in split_tests(opt, sub))


def split_tests(opt: ProtocolConfig, sub: TrainConfig) -> list[tuple[str, TestConfig]]:
    """The test sets of one split's model: its split's test part, then each --cross_dataset whole."""
    tests = [(f"{opt.dataset} (test part)", test_options(sub, opt, None))]
    return tests + [(f"{cross} (all)", test_options(sub, opt, cross)) for cross in opt.cross_dataset]


def run_key(label: str, k: int) -> str:
    """How split ``k`` of the run ``label`` (a variant; '' without --vary) is named in logs and slurm_jobs.json."""
    return f"{label}/split_{k}" if label else f"split_{k}"


def run_parallel(opt: ProtocolConfig, runs: list[tuple[str, ProtocolConfig]]) -> None:
    """``--parallel K``: every split of every run that is not finished, K at a time, each in its own process on its
    own device (GPU ``i`` of --gpu_ids for slot ``i``; on the CPU, the cores shared) with its console in
    ``logs/``. A stop signal reaches every running split (each saves its last.pth) and ends this with code 3; a
    failed split is named with its log, the others run on, and the command fails at the end."""
    jobs = [(label, vopt, k) for label, vopt in runs for k in range(vopt.n_splits) if not split_done(vopt, k)]
    if not jobs:
        return
    devices = [str(g) for g in opt.gpu_list] or ["-1"]
    if opt.gpu_list and opt.parallel > len(devices):
        raise AHIQError(f"--parallel {opt.parallel} trains {opt.parallel} splits at once, one per GPU, and --gpu_ids "
                        f"names {len(devices)}: name {opt.parallel} GPUs (e.g. --gpu_ids "
                        f"{','.join(map(str, range(opt.parallel)))}) or lower --parallel")
    if opt.split_file:  # made once here: the runs would race to write it
        labels = read_labels(opt.train_list, opt.list_format, opt.ref_rule)
        select_rows(labels, "train", opt.split(create=True))
    os.makedirs(os.path.join(opt.run_dir, "logs"), exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // opt.parallel) if not opt.gpu_list else 0
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state or locks inherited
    running: dict[int, tuple] = {}  # slot -> (process, key, console)
    failed: list[str] = []
    told: set[int] = set()  # the processes sent a stop
    with StopRequest() as stop:
        while running or (jobs and not stop.signal):
            while jobs and not stop.signal and len(running) < opt.parallel:
                slot = min(set(range(opt.parallel)) - set(running))
                label, vopt, k = jobs.pop(0)
                key = run_key(label, k)
                console = os.path.join(opt.run_dir, "logs", key.replace("/", "_") + ".txt")
                values = {**vopt.to_dict(), "gpu_ids": devices[slot % len(devices)], "parallel": 1}
                proc = context.Process(target=_split_process, args=(values, k, console, threads), name=key)
                proc.start()
                running[slot] = (proc, key, console)
                log.info("%s: started (process %d, %s; console %s)", key, proc.pid,
                         "CPU" if values["gpu_ids"] == "-1" else "GPU " + values["gpu_ids"], console)
            for slot, (proc, key, console) in list(running.items()):
                if stop.signal and proc.pid not in told:
                    proc.terminate()  # SIGTERM: the split saves its last.pth and exits
                    told.add(proc.pid)
                proc.join(0.2)
                if proc.exitcode is None:
                    continue
                del running[slot]
                if proc.exitcode == 0:
                    log.info("%s: done", key)
                elif not stop.signal:
                    failed.append(f"{key} (exit code {proc.exitcode}; {console})")
                    log.error("%s failed with exit code %d: see %s", key, proc.exitcode, console)
    if stop.signal:
        log.warning("stopped by %s; each running split stopped at its next step and saved its last.pth: run the same "
                    "command again to continue", stop.signal)
        sys.exit(3)
    if failed:
        raise AHIQError(f"{len(failed)} split(s) failed: {'; '.join(failed)}; the others are kept: run the same "
                        "command again to retry these")


def _split_process(values: dict, k: int, console: str, threads: int) -> None:
    """One split of :func:`run_parallel`, in its own process: its console to ``console``, its errors one line."""
    with open(console, "a", buffering=1) as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        sys.stdout = sys.stderr = out
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=out, force=True)
        if threads:
            import torch
            torch.set_num_threads(threads)
        run_cli(SplitJob(values, k))


class SplitJob:
    """One split of one variant, with the options ``values``: a SLURM job (submitit) or a process of
    ``--parallel``. Preempted or out of time, submitit calls :meth:`checkpoint` and the job is requeued; it continues
    from the split's last.pth (train.py's resume is exact). A job of several tasks (``--slurm_gpus``: one per GPU)
    joins them in one process group from SLURM's variables: DDP training, then a shared scoring job per test set."""

    def __init__(self, values: dict, k: int) -> None:
        self.values, self.k = values, k

    def __call__(self) -> str:
        opt = build(ProtocolConfig, self.values)
        if "SUBMITIT_FOLDER" in os.environ or "SUBMITIT_EXECUTOR" in os.environ:
            import submitit
            if submitit.JobEnvironment().num_tasks > 1:  # RANK, WORLD_SIZE, MASTER_ADDR, ... as torchrun sets them
                submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        with process_group(opt.run) as info:
            return run_split(opt, self.k, info)[0]

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(SplitJob(self.values, self.k))


ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "UNKNOWN")


def submit_or_collect(opt: ProtocolConfig, runs: list[tuple[str, ProtocolConfig]]) -> list[str]:
    """``--launcher slurm``: every split of every run that is neither finished nor running (by the job id recorded
    in ``slurm_jobs.json``) is submitted as one job (:class:`SplitJob`; a failed one again, with the reason of its
    failure said); returns what is not finished yet ([]: everything is, and the tables can be written)."""
    try:
        import submitit
    except ImportError:
        raise AHIQError("--launcher slurm needs submitit: pip install -r requirements-slurm.txt (or drop "
                        "--launcher slurm)") from None
    record_path = os.path.join(opt.run_dir, "slurm_jobs.json")
    record = json.loads(read_text(record_path)) if os.path.isfile(record_path) else {}
    job_class = importlib.import_module("protocol").SplitJob  # by module name: the job imports it from the checkout
    executor = submitit.SlurmExecutor(folder=os.path.join(opt.run_dir, "slurm", "%j"))
    extra = dict(kv.split("=", 1) for kv in opt.slurm_opt)
    executor.update_parameters(
        job_name=f"ahiq-{opt.name}", time=opt.slurm_time, gpus_per_node=opt.slurm_gpus or None,
        ntasks_per_node=max(1, opt.slurm_gpus),
        partition=opt.slurm_partition, account=opt.slurm_account, constraint=opt.slurm_constraint,
        signal_delay_s=120, additional_parameters=extra or None,
        setup=[f"export PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}"])  # the job imports protocol
    pending, states = [], {}
    for label, vopt in runs:
        values = {**vopt.to_dict(), "gpu_ids": "0" if opt.slurm_gpus else "-1", "launcher": "local"}
        for k in range(vopt.n_splits):
            key = run_key(label, k)
            if split_done(vopt, k):
                states[key] = "done"
                continue
            job_id = record.get(key)
            state = submitit.SlurmJob(os.path.join(opt.run_dir, "slurm", "%j"), job_id).state if job_id else None
            if state in ACTIVE:
                states[key] = f"{state.lower()} (job {job_id})"
            else:
                if job_id:
                    log.warning("%s: job %s ended %s without finishing; submitting it again", key, job_id, state)
                job = executor.submit(job_class(values, k))
                record[key] = job.job_id
                states[key] = f"submitted (job {job.job_id})"
            pending.append(key)
        atomic_write(record_path, json.dumps(record, indent=1) + "\n")
    for key, state in states.items():
        print(f"{key}: {state}")
    if pending:
        print(f"{len(pending)} of {len(states)} run(s) not finished; run the same command again to collect them "
              f"(job ids in {record_path})")
    return pending


def run_protocol(opt: ProtocolConfig, info: DistInfo) -> tuple[dict, list[dict]]:
    """Train and test every split in ``opt.run_dir`` (finished splits reused, an interrupted one resumed); the
    summary over splits and the rows of every split and test set."""
    check_same_protocol(opt)
    if opt.split_file and os.path.exists(opt.split_file):
        held = len(read_splits(opt.split_file)["splits"])
        if held < opt.n_splits:
            raise AHIQError(f"{opt.split_file}: holds {held} splits, --n_splits asks for {opt.n_splits}; pass "
                            f"--n_splits {held} or a new --split_file")
    save_options(opt, "protocol")
    rows = []
    for k in range(opt.n_splits):
        for test_set, metrics in run_split(opt, k, info)[1]:  # one row per split and test set (the CSV's columns)
            rows.append({**{key: metrics.get(key) for key in ROW}, "split": k, "test_set": test_set,
                         "epoch": (metrics.get("trained") or {}).get("epochs_trained"),
                         "groups": {key: v for key, v in metrics.items() if key.startswith("by_")},
                         "warning": metrics.get("warning")})
        # after every split, so an interrupted protocol keeps its results
        write_results(opt, rows, summarise(rows), group_summary(rows))
    summary = summarise(rows)
    table = summary_table(summary)
    if opt.report:
        log.info("wrote %s", write_report(opt, rows, summary))
    print(f"\n{opt.dataset}: {opt.n_splits} split(s) of {opt.split_file or 'column ' + opt.split_column}\n{table}")
    print(f"per split: {os.path.join(opt.run_dir, 'protocol_results.csv')}; summary: "
          f"{os.path.join(opt.run_dir, 'protocol_summary.json')}")
    return summary, rows


LIST_OPTIONS = ("vit_blocks", "cnn_blocks")  # options whose one value holds commas: their values split at ';'


def ablation_variants(opt: ProtocolConfig) -> list[tuple[str, ProtocolConfig]]:
    """The baseline (the options as given) and each variant of ``--vary`` (one factor at a time, or every
    combination with ``--factorial``), each a protocol in its own folder under the run folder, all on the run's one
    split file; [] without --vary. A key that is not a model or training option, or a value it does not take, is
    refused in one line (each variant's values are checked as a command line's are, by :func:`build`)."""
    if not opt.vary:
        return []
    actions = {a.dest: a for a in options_of(ProtocolConfig.parser())}
    varied: dict[str, list] = {}
    changeable = set(opt.fields(RESULT, RESUMABLE)) - {"dataset", "data_root", "split_file", "split_column"}
    for spec in opt.vary:
        key, sep, text = spec.partition("=")
        if not sep or key not in changeable:
            raise AHIQError(f"--vary {spec!r}: give KEY=V1[,V2...] with KEY a model or training option ("
                            f"{', '.join(sorted(changeable))})")
        action = actions[key]
        for value in filter(None, text.split(";" if key in LIST_OPTIONS else ",")):
            try:
                parsed = {"true": True, "false": False}[value.lower()] if action.nargs == 0 else \
                    (action.type or str)(value)
            except (KeyError, ValueError):
                raise AHIQError(f"--vary {key}={value}: not a value --{key} takes") from None
            varied.setdefault(key, []).append((value, parsed))
    if opt.factorial:
        combos = [dict(c) for c in itertools.product(*([(k, v) for v in vs] for k, vs in varied.items()))]
    else:
        combos = [{k: v} for k, vs in varied.items() for v in vs]
    runs = [("baseline", {})] + [(",".join(f"{k}={text}" for k, (text, _) in c.items()),
                                  {k: parsed for k, (_, parsed) in c.items()}) for c in combos]
    out = []
    for label, changes in runs:
        values = {**opt.to_dict(), **changes, "name": f"{opt.name}/{label}", "split_file": opt.split_file,
                  "vary": (), "factorial": False}
        out.append((label, check_train_options(build(ProtocolConfig, values))))  # checked as a command line is
    return out


def same_images_test(variant: ProtocolConfig, baseline: ProtocolConfig, k: int) -> dict:
    """tools.compare's test on split ``k``'s test part: the variant's and the baseline's predictions of the same
    images against their MOS, Williams' test for SRCC and PLCC (two-sided p; None where undefined)."""
    topt = test_options(split_options(variant, k), variant, None)
    labels = select_rows(read_labels(topt.test_list, topt.list_format, topt.ref_rule), "test", topt.split())
    preds = []
    for opt in (variant, baseline):
        names, scores = read_list(os.path.join(split_options(opt, k).run_dir, RESULTS_FILE))
        by_name = dict(zip(names, scores.tolist()))
        preds.append(np.asarray([by_name[n] for n in labels.names], np.float64))
    mos = LabelNorm.fit(labels.raw, topt.lower_better).apply(labels.raw)
    c = compare_models(*preds, mos, labels.refs, n_boot=0)
    return {"split": k, "n": c["n"], "srcc_williams_p": c["srcc"]["williams_p"],
            "plcc_williams_p": c["plcc"]["williams_p"]}


def paired(mine: dict[int, float | None], theirs: dict[int, float | None]) -> dict:
    """A variant's value against the baseline's over the splits both measured: the mean of the per-split
    differences, in how many splits it is higher, a paired t-test (two-sided; None with fewer than 2 splits or no
    spread) and which way the difference goes."""
    from scipy import stats
    pairs = [(mine[k], theirs[k]) for k in sorted(mine) if mine[k] is not None and theirs.get(k) is not None]
    if not pairs:
        return {"pairs": 0, "diff_mean": None, "higher_in": 0, "p_paired_t": None, "direction": None}
    diff = np.asarray([a - b for a, b in pairs], np.float64)
    # no spread: equal differences (to float rounding: 0.5 - 0.6 and 0.1 - 0.2 differ in the 17th digit, which
    # a t-test would read as certainty, p ~ 1e-16)
    spread = len(diff) > 1 and np.ptp(diff) > 1e-9 * max(float(np.max(np.abs(diff))), 1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(stats.ttest_rel(*zip(*pairs)).pvalue) if spread else math.nan
    return {"pairs": len(diff), "diff_mean": float(diff.mean()), "higher_in": int(np.sum(diff > 0)),
            "p_paired_t": p if math.isfinite(p) else None,
            "direction": "higher" if diff.mean() > 0 else "lower" if diff.mean() < 0 else "same"}


def write_ablation(opt: ProtocolConfig, results: dict[str, list[dict]],
                   runs: dict[str, ProtocolConfig] | None = None) -> dict:
    """``ablation.json`` and ``ablation.md`` in the run folder: per variant and test set, SRCC/PLCC/KRCC median and
    mean +- std over splits and against the baseline :func:`paired`'s comparison over the same splits; per
    distortion group (where the lists have groups) the median SRCC and the same comparison; with ``runs`` (each
    variant's options), per split the test between the two models on the same images (:func:`same_images_test`,
    the split's test part)."""
    base = results["baseline"]
    table: dict = {}
    for label, rows in results.items():
        summary, groups = summarise(rows), group_summary(rows)  # what each variant's own protocol reports
        for test_set in sorted(summary):
            mine = {r["split"]: r for r in rows if r["test_set"] == test_set}
            theirs = {r["split"]: r for r in base if r["test_set"] == test_set}
            entry: dict = {"splits": len(mine)}
            for m in METRICS:
                s = summary[test_set][m]
                entry[m] = {"median": s["median"], "mean": s["mean"], "std": None if math.isnan(s["std"]) else s["std"]}
                if label != "baseline":
                    entry[m].update(paired({k: r[m] for k, r in mine.items()}, {k: r[m] for k, r in theirs.items()}))
            base_splits = group_rows(base, test_set)
            for key, by_code in group_rows(rows, test_set).items():
                entry.setdefault("groups", {})[key] = {}
                for code, by_split in by_code.items():
                    s = groups[test_set][key][code]
                    g = {"splits": s["splits"], "srcc_median": s["srcc_median"]}
                    if label != "baseline":
                        base_group = base_splits.get(key, {}).get(code, {})
                        g.update(paired({k: m.get("srcc") for k, m in by_split.items()},
                                        {k: m.get("srcc") for k, m in base_group.items()}))
                    name = next(iter(by_split.values())).get("name")
                    entry["groups"][key][f"{code} ({name})" if name else code] = g
            if runs and label != "baseline" and test_set == f"{opt.dataset} (test part)":
                entry["same_images"] = [same_images_test(runs[label], runs["baseline"], k) for k in sorted(mine)]
            table.setdefault(test_set, {})[label] = entry
    doc = {"baseline": "the options as given", "varied": list(opt.vary), "factorial": opt.factorial,
           "split_file": opt.split_file, "n_splits": opt.n_splits, "std": "sample (n-1)",
           "test": "paired t-test over the same splits, two-sided", "table": table}
    atomic_write(os.path.join(opt.run_dir, "ablation.json"), json.dumps(doc, indent=2, allow_nan=False) + "\n")
    text = ablation_markdown(table, opt.n_splits)
    atomic_write(os.path.join(opt.run_dir, "ablation.md"), text)
    if opt.report:  # the same tables as a page, linking each variant's protocol report
        sections = []
        for test_set, variants in table.items():
            rows = [(label, m.upper(), e[m]["median"], e[m]["mean"], e[m]["std"], e[m].get("diff_mean"),
                     f"{e[m]['higher_in']}/{e[m]['pairs']}" if "pairs" in e[m] else "", e[m].get("p_paired_t"))
                    for label, e in variants.items() for m in METRICS]
            sections.append((test_set, report.table(("variant", "metric", "median", "mean", "std", "mean diff",
                                                     "higher in", "paired t p"), rows, sortable=True)))
            groups = [(key, name, label, g["srcc_median"], g["splits"], g.get("diff_mean"),
                       f"{g['higher_in']}/{g['pairs']}" if "pairs" in g else "", g.get("p_paired_t"))
                      for label, e in variants.items() for key, gs in e.get("groups", {}).items()
                      for name, g in gs.items()]
            if groups:
                sections.append((f"{test_set}: per distortion group (SRCC)", report.table(
                    ("grouping", "group", "variant", "median", "splits measured", "mean diff", "higher in",
                     "paired t p"), groups, sortable=True)))
        links = " ".join(f'<a href="{report.esc(label)}/protocol_report.html">{report.esc(label)}</a>'
                         for label in results)
        sections.append(("Each variant's protocol report", f"<p>{links}</p>"))
        atomic_write(os.path.join(opt.run_dir, "ablation_report.html"),
                     report.page(f"AHIQ ablation on {opt.dataset}: {opt.name}", None, sections))
    print(f"\n{text}\nablation: {os.path.join(opt.run_dir, 'ablation.md')}")
    return doc


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _versus(e: dict) -> str:
    """A comparison of :func:`paired` as a table cell's tail."""
    if "pairs" not in e:
        return ""
    if not e["pairs"]:
        return "; no split measured both"
    return f"; {e['diff_mean']:+.4f}, higher in {e['higher_in']}/{e['pairs']}, p {_p(e['p_paired_t'])}"


def ablation_markdown(table: dict, n_splits: int) -> str:
    def cell(e: dict) -> str:
        s = f"{e['median']:.4f} ({e['mean']:.4f} +- {e['std']:.4f})" if e["std"] is not None else f"{e['median']:.4f}"
        return s + _versus(e)

    lines = []
    for test_set, variants in table.items():
        lines += [f"### {test_set}: median (mean +- std) over {n_splits} splits; against the baseline: mean "
                  "difference, splits where higher, paired t-test p (two-sided)", "",
                  "| variant | " + " | ".join(m.upper() for m in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(cell(e[m]) for m in METRICS) + " |" for label, e in variants.items()]
        lines.append("")
        for label, e in variants.items():
            if e.get("same_images"):
                tests = "; ".join(f"split {t['split']}: {_p(t['srcc_williams_p'])}, {_p(t['plcc_williams_p'])}"
                                  for t in e["same_images"])
                lines.append(f"- {label}, Williams' test against the baseline on each split's images (SRCC p, PLCC "
                             f"p, two-sided): {tests}")
        lines.append("")
        keys = dict.fromkeys(key for e in variants.values() for key in e.get("groups", {}))
        for key in keys:  # per distortion type (or level): the median SRCC, and against the baseline
            names = dict.fromkeys(n for e in variants.values() for n in e.get("groups", {}).get(key, {}))
            lines += [f"#### {test_set}, SRCC {key.replace('_', ' ')}: median over the splits that measured it "
                      "(splits); against the baseline as above", "",
                      f"| {key[3:]} | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
            for name in names:
                cells = []
                for e in variants.values():
                    g = e.get("groups", {}).get(key, {}).get(name)
                    cells.append("-" if g is None else "n/a (too few images)" if g["srcc_median"] is None else
                                 f"{g['srcc_median']:.4f} ({g['splits']})" + _versus(g))
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
