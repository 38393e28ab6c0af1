"""Score a list of image pairs with a trained AHIQ model; reproduce the NTIRE 2022 FR submission (``sh test.sh``).

Writes ``{checkpoints_dir}/{name}/{test_file_name}`` (one ``name,score`` line per listed image, in list order) and,
when the list has MOS, prints SRCC/PLCC/KRCC/RMSE and the main score and saves them as JSON beside it.
``--submission DIR`` also writes the NTIRE package. Other datasets: ``--dataset``/``--data_root``/CSV labels, and
``--split_file`` + ``--split_part`` to score one part of a split. Example: ``sh test.sh`` or ``python test.py --help``.
The model and its crop size come from the checkpoint (models/config.py); model switches given must agree with it.
Importable (protocol.py, the tests) as ``test``: run from the checkout, this file comes before the standard library's
``test`` package on ``sys.path``.
"""
from __future__ import annotations

import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split

import json
import logging
import os
import time
import zipfile

import numpy as np
import torch

from data.label_norm import require_scores
from data.score_mapping import fit_mapping, load_mapping
from engine import runtime
from engine.jobs import Progress, list_digest, score_list
from models.config import describe_backbone
from options.policy import RESULT
from options.test_options import TestConfig, parse_test_options
from utils import report
from utils.checkpoint import meta_of
from utils.distributed import DistInfo
from utils.errors import StopRequest, run_cli
from utils.files import Lock, atomic_write, read_bytes, read_json
from utils.metrics import MIN_FIT_IMAGES, fit_logistic4, fmt, iqa_metrics, logistic4, logistic_fit_problem, metrics_line
from utils.plots import groups_png, optional_figure, scatter_png, worst_png
from utils.records import require_same
from utils.stats import CI_METRICS, bootstrap_intervals, group_metrics, p1401

log = logging.getLogger("ahiq.test")


def format_predictions(names: list[str], preds: np.ndarray) -> str:
    return "".join(f"{name},{score:.9g}\n" for name, score in zip(names, preds))


def beside(results: str, suffix: str) -> str:
    """The file named after the results file ``results``, beside it: ``{stem}{suffix}`` (``_metrics.json``,
    ``_source.json``, ``_scatter.png``, ``_groups.png``, ``_worst.png``, ``_mapped.txt``, ``_report.html``)."""
    return os.path.splitext(results)[0] + suffix


def metrics_file(run_dir: str, test_file_name: str) -> str:
    """Where test.py writes the metrics of ``test_file_name``."""
    return beside(os.path.join(run_dir, test_file_name), "_metrics.json")


def write_submission(folder: str, predictions: str, seconds_per_image: float, device: str, n_ensemble: int) -> str:
    """The NTIRE 2022 FR package: output.txt, readme.txt and submission.zip holding just those two."""
    on_cpu = not device.startswith("cuda")
    hardware = "CPU" if on_cpu else torch.cuda.get_device_name(device)
    readme = (f"runtime per image [s] : {seconds_per_image:.4f}\n"
              f"CPU[1] / GPU[0] : {int(on_cpu)}\n"
              "Extra Data [1] / No Extra Data [0] : 1\n"
              "Other description : AHIQ (Lao et al., CVPRW 2022): ViT-B and ResNet-50 features (ImageNet-pretrained, "
              "frozen), deformable feature fusion and a patch-weighted quality head, trained on the PIPAL training "
              f"set; {n_ensemble}-crop ensemble at test time. Runtime measured on {hardware}.\n"
              "Full-Reference [1] / Non-Reference [0] : 1\n")
    atomic_write(os.path.join(folder, "output.txt"), predictions)
    atomic_write(os.path.join(folder, "readme.txt"), readme)
    zip_path = os.path.join(folder, "submission.zip")
    tmp = zip_path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("output.txt", predictions)
        zf.writestr("readme.txt", readme)
    os.replace(tmp, zip_path)
    return zip_path


def fitted_labels(preds: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, str]:
    """The predictions mapped to the (normalised) labels by the rising 4-parameter logistic, or by a straight line
    when the logistic does not fit; and which fit it was, in words."""
    params = fit_logistic4(preds, labels) if len(preds) >= MIN_FIT_IMAGES else None
    if logistic_fit_problem(preds, labels, params):
        return np.polyval(np.polyfit(preds, labels, 1), preds), "a linear fit (the logistic fit is not sound)"
    return logistic4(preds, *params), "the logistic fit"


def write_worst(scorer, dataset, index: np.ndarray, preds: np.ndarray, labels: np.ndarray, opt: TestConfig) -> str:
    """``{stem}_worst.png``: the ``--worst`` images furthest from their MOS after the 4-parameter logistic fit (a
    straight line when the logistic does not fit), each with its patch maps."""
    fitted, fit = fitted_labels(preds, labels)
    worst = np.argsort(-np.abs(fitted - labels), kind="stable")[:opt.worst]
    chosen = [int(index[i]) for i in worst]
    maps = scorer.dataset_maps(dataset, chosen, opt.batch_size, opt.num_workers)
    fitted_mos, mos = dataset.norm.invert(fitted), dataset.norm.invert(labels)  # the list's units, as the scatter
    rows = [(dataset.names[i], dataset.load(dataset.paths(i)[0]), dataset.load(dataset.paths(i)[1]), m,
             float(fitted_mos[j]), float(mos[j])) for i, j, m in zip(chosen, worst, maps)]
    title = (f"{len(rows)} images furthest from their MOS after {fit}: {os.path.basename(opt.test_list)}, "
             f"{os.path.basename(opt.run_dir)} (the list's {'DMOS' if dataset.norm.lower_better else 'MOS'} units)")
    path = beside(os.path.join(opt.run_dir, opt.test_file_name), "_worst.png")
    atomic_write(path, worst_png(rows, scorer.marked(title)))
    log.info("wrote %s", path)
    return path


def write_groups_figure(tables: dict[str, dict], path: str, title: str) -> str | None:
    """``{stem}_groups.png``: SRCC per distortion group with counts (None when the list names no groups)."""
    if not any(tables.values()):
        return None
    png = optional_figure(lambda: groups_png(tables, title), path)
    if png is None:
        return None
    atomic_write(path, png)
    log.info("wrote %s", path)
    return path


def write_report(path: str, opt: TestConfig, run: dict, dataset, out, metrics: dict | None,
                 figures: list[str]) -> str:
    """``{stem}_report.html`` (--report): :mod:`utils.report`'s one self-contained page of this run."""
    provenance = [("checkpoint", run["checkpoint"] or "none (random head)"),
                  ("trained", ", ".join(f"{k} {v}" for k, v in run["trained"].items() if v is not None)
                   or "no record (an official or pyiqa file)"),
                  *((f"{part} backbone", describe_backbone(r)) for part, r in run["backbones"].items()),
                  ("list", os.path.abspath(opt.test_list)), ("dataset", runtime.dataset_name(opt, opt.test_list)),
                  ("split", run["split"]),
                  ("images", len(out.names)),
                  ("windows", f"{opt.n_ensemble} per image, {opt.windows}, seed {opt.seed}, crop {run['crop']}"),
                  ("device", f"{run['device']}, {run['seconds_per_image']:.4f} s per image"),
                  ("written", time.strftime("%Y-%m-%d %H:%M:%S %Z")), ("torch", torch.__version__)]
    sections = [("Run", report.table(("", ""), provenance)
                 + "<details><summary>all options</summary><pre>" + report.esc(json.dumps(opt.to_dict(), indent=1))
                 + "</pre></details>")]
    labels = out.labels if metrics is not None else None
    if metrics is not None:
        ci = metrics.get("intervals") or {}
        names = {"srcc": "SRCC", "plcc": "PLCC", "plcc_logistic": "PLCC after the logistic", "krcc": "KRCC",
                 "rmse": "RMSE (normalised MOS)", "rmse_mapped": "RMSE after the logistic (MOS units, P.1401)",
                 "outlier_ratio": "outlier ratio (P.1401, 2 std)", "main_score": "main score (raw PLCC + SRCC)"}
        rows = [(label, metrics[m], *((ci.get(m) or [None, None]) if m in CI_METRICS else ("", "")))
                for m, label in names.items()]
        note = (f"95% intervals: {ci['resamples']} seeded resamples of {ci['resampled']}" if ci.get("resamples")
                else f"no intervals: {ci.get('note') or '--bootstrap 0'}")
        if metrics.get("plcc_logistic_note"):
            note += f"; no logistic PLCC: {metrics['plcc_logistic_note']}"
        if metrics.get("p1401_note") and metrics["p1401_note"] != metrics.get("plcc_logistic_note"):
            note += f"; P.1401: {metrics['p1401_note']}"  # the same unsound fit is said once
        sections.append(("Metrics", report.table(("metric", "value", "95% low", "95% high"), rows)
                         + f'<p class="muted">{report.esc(note)}.</p>'))
        groups = {k: v for k, v in metrics.items() if k.startswith("by_") and v}
        if groups:
            sections.append(("Per distortion group", report.group_tables(groups)))
    if figures:
        sections.append(("Figures", "".join(report.image(read_bytes(f), os.path.basename(f)) for f in figures)))
    keys = list(dataset.groups)
    header = ["#", "image", "reference", *keys, "score"]
    columns = [[i + 1 for i in range(len(out.names))], list(out.names),
               [os.path.basename(dataset.paths(int(i))[1]) for i in out.index],
               *([dataset.groups[k][int(i)] for i in out.index] for k in keys), [float(p) for p in out.preds]]
    if labels is not None:
        fitted, fit = fitted_labels(out.preds, labels)
        header += ["fitted MOS", "MOS", "|fitted - MOS|"]
        mos, fitted_mos = dataset.norm.invert(labels), dataset.norm.invert(fitted)
        columns += [[float(v) for v in fitted_mos], [float(v) for v in mos],
                    [float(v) for v in np.abs(fitted_mos - mos)]]
    note = ("" if labels is None else f'<p class="muted">fitted MOS: the score through {report.esc(fit)}, in the '
            "list's units.</p>")
    sections.append(("Per image", note + report.filter_box(len(out.names))
                     + report.table(header, list(zip(*columns)), sortable=True, table_id="images")))
    title = f"AHIQ on {os.path.basename(opt.test_list)}: {os.path.basename(run['checkpoint'] or 'random head')}"
    atomic_write(path, report.page(title, run["warning"], sections))
    log.info("wrote %s", path)
    return path


def paper_tables(dataset, index: np.ndarray, preds: np.ndarray, labels: np.ndarray, opt: TestConfig) -> dict:
    """What papers report beside the overall numbers: SRCC/PLCC per distortion type and level (where the list's
    names or columns say them; small groups marked) and seeded bootstrap intervals (over references when they
    repeat, so an image's siblings are not counted as independent)."""
    refs = [dataset.reference_key(i) for i in index]
    grouped = refs if len(set(refs)) < len(refs) else None  # resample whole references when they repeat
    grouping = dataset.grouping
    out = {f"by_{key}": group_metrics(preds, labels, [values[i] for i in index], grouped, opt.bootstrap, opt.seed,
                                      names=lambda code, key=key: grouping.name_of(key, code))
           for key, values in dataset.groups.items()}
    out["groups_from"] = grouping.why if grouping is not None else None
    if opt.bootstrap > 0:
        out["intervals"] = bootstrap_intervals(preds, labels, grouped, opt.bootstrap, opt.seed)
        ci = out["intervals"]
        if ci["resamples"]:
            log.info("95%% intervals (%d resamples of %s): %s", ci["resamples"], ci["resampled"].split(" ")[0],
                     "  ".join(f"{m.upper()} [{fmt(ci[m][0])}, {fmt(ci[m][1])}]" for m in CI_METRICS))
        else:
            log.info("no intervals: %s", ci["note"])
    for key in dataset.groups:
        table = out[f"by_{key}"]
        log.info("per distortion %s (from %s): %d groups in the metrics file (%d with too few images)", key,
                 grouping.why, len(table), sum(g["srcc"] is None for g in table.values()))
    return out


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(parse_test_options(argv))


def scored_split(opt: TestConfig) -> dict:
    """What of the list was scored, as the report, the metrics file and the log name it: the split file (or column),
    its index and the part actually used (the test part unless --split_part says otherwise); every row without a
    split."""
    split = opt.split()
    if not split.active:
        return {"file": None, "index": None, "column": None, "part": "all", "described": "every row, no split"}
    part = opt.split_part or "test"
    return {"file": opt.split_file, "index": None if opt.split_column else opt.split_index,
            "column": opt.split_column, "part": part, "described": f"{split.describe()}, part {part}"}


def claim(results: str, source: dict, overwrite: bool) -> None:
    """Refuse to replace ``results`` (and the files named after it) when they hold the predictions of another
    checkpoint, list or split, or of something test.py has no record of; ``overwrite`` replaces them anyway."""
    if overwrite or not os.path.exists(results):
        return
    fix = "pass another --test_file_name (or --submission folder), or --overwrite to replace it"
    before = read_json(beside(results, "_source.json"), f"test.py's record of what {results} holds", fix)
    require_same(before, source, results, "holds the predictions of another run", fix)


def run(opt: TestConfig) -> dict:
    """Score the test set the configuration describes; returns paths, timing and metrics (rank 0 of a torchrun job;
    the other ranks return an empty dict). The results file is this run's alone while it runs (a lock beside it): a
    second run writing the same results is refused in one line."""
    out_path = os.path.join(opt.run_dir, opt.test_file_name)
    with runtime.process_group(opt.run) as info:
        lock = Lock(os.path.join(opt.run_dir, f".{opt.test_file_name}.lock"), f"{out_path}: another test.py run is "
                    "writing these results now; wait for it to end, or pass another --test_file_name") \
            if info.is_main else None
        try:
            return score(opt, out_path, info)
        finally:
            if lock is not None:
                lock.release()


def score(opt: TestConfig, out_path: str, info: DistInfo) -> dict:
    """:func:`run` under its lock: shared over the job's processes, recorded batch by batch, continued with
    --resume (engine/jobs.py)."""
    checkpoint = runtime.scoring_checkpoint(opt)
    policy = runtime.policy_of(opt, checkpoint.config.crop_size)
    dataset = runtime.load_dataset(opt, "test", opt.split_part or "test", policy, flip=opt.flip)  # images checked first
    mapping = load_mapping(opt.mapping) if opt.mapping else None  # before anything slow
    if opt.fit_mapping:
        require_scores(dataset.raw_scores, opt.test_list, "--fit_mapping", "score a list with MOS")
    if opt.worst:
        require_scores(dataset.raw_scores, opt.test_list, f"--worst {opt.worst} (the images furthest from their MOS)",
                       "drop --worst, or score a list with MOS", minimum=1, vary=False)
    source = {"checkpoint": os.path.abspath(checkpoint.path) if checkpoint.path else None,
              "list": os.path.abspath(opt.test_list), "split": [opt.split_file and os.path.abspath(opt.split_file),
                                                                 opt.split_index, opt.split_column, opt.split_part]}
    package = os.path.join(opt.submission, "output.txt") if opt.submission else None
    if info.is_main:
        for path in filter(None, (out_path, package)):
            claim(path, source, opt.overwrite)
    device = info.device
    amp_dtype = runtime.configure_device(opt.run, device)
    scorer = runtime.scorer_for(opt, checkpoint, policy, device, amp_dtype)
    weights = scorer.weights()  # digested once: the progress, the mapping's check and a fitted mapping record them
    note = mapping.check_model(weights, opt.allow_other_mapping) if mapping is not None else None
    if note and info.is_main:
        log.warning(note)
    ckpt_path = checkpoint.path
    meta = meta_of(checkpoint.state or {})
    trained = {key: meta.get(key) for key in ("dataset", "epochs_trained", "best_metric")}  # None: official files
    backbones = dict(getattr(scorer.model, "backbones", {}))
    del checkpoint
    if info.is_main:
        runtime.save_options(opt, "test")
    progress = Progress(out_path, {"source": source, "rows": list_digest(dataset), "options": opt.values(RESULT)},
                        info, opt.resume, opt.overwrite, len(dataset))
    progress.bind(weights)
    scored = scored_split(opt)
    start = time.perf_counter()
    with StopRequest() as stop:  # from here a stop finishes the batch and records it
        if info.is_main:
            log.info("scoring %d images of %s (%s) with %s (%d crops each, %s%s)%s", len(dataset), opt.test_list,
                     scored["described"], ckpt_path, opt.n_ensemble, device,
                     f", {info.world_size} processes" if info.world_size > 1 else "",
                     f"; {len(progress.done)} recorded by the stopped run" if progress.done else "")
        out = score_list(scorer, dataset, info, opt.batch_size, opt.num_workers, progress, lambda: stop.signal)
    if out is None:  # another rank of the job: rank 0 writes the results
        return {}
    names, preds, labels = out.names, out.preds, out.labels
    seconds = time.perf_counter() - start
    predictions = format_predictions(names, preds)
    atomic_write(out_path, predictions)
    atomic_write(beside(out_path, "_source.json"), json.dumps(source, indent=2))
    progress.finish()
    log.info("wrote %s (%.3f s per image)", out_path, seconds / len(names))
    if scorer.warning:
        log.warning(scorer.warning)
    result = {"predictions": out_path, "seconds_per_image": seconds / len(names), "checkpoint": ckpt_path,
              "n_images": len(names), "warning": scorer.warning}
    figures, metrics = [], None
    labelled = dataset.norm is not None and len(labels) > 1
    if labelled and dataset.norm.span > 0:
        metrics = iqa_metrics(preds, labels)
        metrics.update(p1401(preds, labels, dataset.norm.span,
                             None if dataset.rating_std is None else dataset.rating_std[out.index]))
        metrics.update(paper_tables(dataset, out.index, preds, labels, opt))
        metrics_path = metrics_file(opt.run_dir, opt.test_file_name)
        atomic_write(metrics_path, json.dumps({**metrics, "warning": scorer.warning, "n_images": len(names),
                                               "list": opt.test_list,
                                               "dataset": runtime.dataset_name(opt, opt.test_list),
                                               "lower_better": opt.lower_better,
                                               "split": scored,
                                               "checkpoint": ckpt_path, "trained": trained,
                                               "n_ensemble": opt.n_ensemble},
                                              indent=2, allow_nan=False))
        plot_path = beside(out_path, "_scatter.png")
        title = scorer.marked(f"{os.path.basename(opt.test_list)}, {os.path.basename(ckpt_path or 'random head')}")
        png = optional_figure(lambda: scatter_png(preds, labels, metrics, title, dataset.norm), plot_path)
        if png is not None:
            atomic_write(plot_path, png)
            figures.append(plot_path)
        groups = write_groups_figure({k: v for k, v in metrics.items() if k.startswith("by_")},
                                     beside(out_path, "_groups.png"), title)
        figures += [groups] if groups else []
        log.info("%s  -> %s, %s", metrics_line(metrics), metrics_path, plot_path)
        if metrics["plcc_logistic_note"]:
            log.info("no logistic-mapped PLCC: %s", metrics["plcc_logistic_note"])
        log.info("P.1401: RMSE after the logistic %s (%s units)%s%s", fmt(metrics["rmse_mapped"]),
                 os.path.basename(opt.test_list), "" if metrics["outlier_ratio"] is None else
                 f", outlier ratio {metrics['outlier_ratio']:.4f}", f"; {metrics['p1401_note']}"
                 if metrics["p1401_note"] else "")
        result.update(metrics, trained=trained)
        if opt.fit_mapping:
            raw = dataset.raw_scores[out.index]
            fitted = fit_mapping(preds, raw, dataset.norm, opt.test_list, ckpt_path, weights)
            fitted.save(opt.fit_mapping)
            log.info("wrote %s: scores -> %s (rising logistic on %d images)", opt.fit_mapping, fitted.units, fitted.n)
            result["mapping"] = opt.fit_mapping
        if opt.worst:
            result["worst"] = write_worst(scorer, dataset, out.index, preds, labels, opt)
            figures.append(result["worst"])
    if mapping is not None:
        mapped_path = beside(out_path, "_mapped.txt")
        atomic_write(mapped_path, format_predictions(names, mapping(preds)))
        log.info("wrote %s: the scores in %s", mapped_path, mapping.units)
        result["mapped"] = mapped_path
    if opt.report:
        run = {"checkpoint": ckpt_path, "trained": trained, "backbones": backbones, "crop": policy.crop,
               "device": device, "seconds_per_image": seconds / len(names), "warning": scorer.warning,
               "split": scored["described"]}
        result["report"] = write_report(beside(out_path, "_report.html"), opt, run, dataset, out, metrics, figures)
    if opt.submission:
        zip_path = write_submission(opt.submission, predictions, seconds / len(names), device, opt.n_ensemble)
        atomic_write(beside(package, "_source.json"), json.dumps(source, indent=2))
        log.info("wrote the NTIRE submission package %s", zip_path)
    if labelled:
        require_scores(dataset.raw_scores, opt.test_list, "SRCC/PLCC",
                       f"no metrics were written; the predictions are in {out_path}")
    return result


if __name__ == "__main__":
    run_cli(main)
