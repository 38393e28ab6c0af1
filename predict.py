"""Score your own image pairs: one pair (``--dis a.png --ref b.png``), a folder against a folder of references
(matched by file name, PIPAL's or KADID/TID's naming rule: ``--pair_rule``), a folder against one reference
(``--dis_dir D --ref FILE``), or a pairs file (``--pairs FILE``, a CSV with ``dis,ref`` columns): data/pairs.py.

Prints a table (and writes ``--csv``): higher scores are better; by default on the normalised [0, 1] training
scale, ``--mos_scale`` maps them to MOS units with the range stored in the checkpoint (or ``--mos_range LO HI``).
``--maps DIR`` also writes, per pair, a PNG panel of the patch score, weight and contribution maps and the maps as
``.npz``; ``--windows grid`` scores every pixel of images larger than the crop. A pairs file with a MOS column
also gets SRCC/PLCC/KRCC/RMSE (and, with ``--csv``, a metrics JSON and a scatter plot beside it).
Uses the released checkpoint in checkpoints/ahiq_pipal (``sh download.sh``) unless ``--ckpt`` says otherwise.
"""
from __future__ import annotations

import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split

import csv
import io
import json
import logging
import os
import signal

import numpy as np

from data.datasets import check_name
from data.label_norm import LabelNorm
from data.pairs import PAIR_RULES, images_in, match_folders, pairs_file, with_reference
from data.score_mapping import load_mapping
from engine.jobs import Progress, score_list
from engine.runtime import (
    configure_device,
    onnx_scorer_for,
    policy_of,
    process_group,
    scorer_for,
    scoring_checkpoint,
)
from engine.scorer import Scorer
from options.policy import RESULT
from options.predict_options import PredictConfig, parse_predict_options
from utils.distributed import DistInfo
from utils.errors import AHIQError, Interrupted, StopRequest, run_cli
from utils.files import atomic_write, file_error
from utils.metrics import iqa_metrics, metrics_line
from utils.plots import maps_panel_png, optional_figure, scatter_png
from utils.records import digest

log = logging.getLogger("ahiq.predict")


def table(pairs: list[tuple[str, str]], scores, unit: str) -> str:
    width = max(len(d) for d, _ in pairs)
    lines = [f"{'distorted'.ljust(width)}  score ({unit})"]
    lines += [f"{d.ljust(width)}  {s:.4f}" for (d, _), s in zip(pairs, scores)]
    return "\n".join(lines)


def pairs_of(opt: PredictConfig) -> tuple[list[tuple[str, str]], np.ndarray | None]:
    """The pairs the options name (the layouts of :mod:`data.pairs`) and their MOS when a pairs file has them."""
    if opt.identical:
        refs = [opt.ref] if opt.ref else [os.path.join(opt.ref_dir, name) for name in images_in(opt.ref_dir)]
        return [(path, path) for path in refs], None
    if opt.pairs:
        return pairs_file(opt.pairs, opt.dis_dir, opt.ref_dir)
    if opt.dis:
        return [(opt.dis, opt.ref)], None
    if opt.ref:
        return with_reference(opt.dis_dir, opt.ref), None
    pairs, rule = match_folders(opt.dis_dir, opt.ref_dir, opt.pair_rule)
    log.info("%d pairs: each image of %s with its reference in %s by %s (--pair_rule %s)", len(pairs), opt.dis_dir,
             opt.ref_dir, PAIR_RULES[rule], rule)
    return pairs, None


def check_outputs(opt: PredictConfig, pairs: list[tuple[str, str]]) -> None:
    """The pairs are each listed once (paths compared resolved) under names a table can hold, and the outputs can be
    written without replacing anything this run did not make (unless --overwrite): --csv a file, --maps a folder
    that is not one of the folders read for images (its PNGs would be taken for images next time)."""
    seen: dict[tuple[str, str], int] = {}
    for i, (d, r) in enumerate(pairs):
        check_name(os.path.basename(d), d)
        key = (os.path.realpath(d), os.path.realpath(r))
        if key in seen:
            raise AHIQError(f"{d}: the same pair as number {seen[key] + 1} ({pairs[seen[key]][0]}); list it once")
        seen[key] = i
    if opt.csv and os.path.lexists(opt.csv) and not opt.overwrite:
        raise AHIQError(f"{opt.csv}: exists; pass another --csv, or --overwrite to replace it")
    if opt.maps:
        scanned = [os.path.realpath(folder) for folder in (opt.dis_dir, opt.ref_dir) if folder]
        if (os.path.lexists(opt.maps) and not os.path.isdir(opt.maps)) or os.path.realpath(opt.maps) in scanned:
            raise AHIQError(f"--maps {opt.maps}: is a file, or a folder read for images (--dis_dir/--ref_dir) where "
                            "its PNGs would be taken for images next time; give another folder")
        clash = [f for stem in map_stems(pairs) for f in (stem + "_maps.png", stem + "_maps.npz")
                 if os.path.lexists(os.path.join(opt.maps, f))]
        if clash and not opt.overwrite:
            raise AHIQError(f"{os.path.join(opt.maps, clash[0])}: exists ({len(clash)} map file(s) of these pairs "
                            "do); pass another --maps folder, or --overwrite to replace them")
        try:
            os.makedirs(opt.maps, exist_ok=True)
        except OSError as err:
            raise file_error(opt.maps, err, "created") from None


def report_metrics(opt: PredictConfig, scores: np.ndarray, mos: np.ndarray) -> dict:
    """SRCC/PLCC/KRCC/RMSE of the scores against the pairs file's MOS (min-max normalised over the file, as test.py
    normalises a list), printed; with --csv also ``{stem}_metrics.json`` and ``{stem}_scatter.png`` beside it."""
    labels = LabelNorm.fit(mos, lower_better=False).apply(mos)
    metrics = iqa_metrics(scores, labels)
    print(f"{opt.data_name}, {len(scores)} pairs: {metrics_line(metrics)}")
    if opt.csv:
        stem = os.path.splitext(opt.csv)[0]
        atomic_write(stem + "_metrics.json", json.dumps({**metrics, "n_images": len(scores), "pairs": opt.pairs,
                                                         "dataset": opt.data_name, "checkpoint": opt.ckpt},
                                                        indent=2, allow_nan=False))
        png = optional_figure(lambda: scatter_png(scores, labels, metrics, f"{opt.data_name}: {opt.pairs}"),
                              stem + "_scatter.png")
        if png is not None:
            atomic_write(stem + "_scatter.png", png)
    return metrics


def map_stems(pairs: list[tuple[str, str]]) -> list[str]:
    """File stems for the maps of each pair: the distorted image's name, numbered when two would clash."""
    stems = [os.path.splitext(os.path.basename(d))[0] for d, _ in pairs]
    if len(set(stems)) < len(stems):
        stems = [f"{i:05d}_{stem}" for i, stem in enumerate(stems)]
    return stems


def write_maps(scorer: Scorer, pairs: list[tuple[str, str]], folder: str, batch_size: int, num_workers: int
               ) -> list[float]:
    """Scores of ``pairs`` and, per pair, ``STEM_maps.png`` (the panel) and ``STEM_maps.npz`` (f, w, contribution,
    covered, windows, score) in ``folder``; pairs are scored ``batch_size`` at a time, so memory stays bounded.
    SIGINT/SIGTERM finish the pairs in flight, then stop with one line saying how many are written."""
    scores, stems = [], map_stems(pairs)
    with StopRequest() as stop:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            done = scorer.score_maps(chunk, batch_size, num_workers, progress=True, images=True)
            for (dis, _), stem, maps in zip(chunk, stems[start:], done):
                buf = io.BytesIO()
                np.savez_compressed(buf, **maps.arrays())
                png = maps_panel_png(*maps.images, maps, os.path.basename(dis))
                atomic_write(os.path.join(folder, stem + "_maps.npz"), buf.getvalue())
                atomic_write(os.path.join(folder, stem + "_maps.png"), png)
                scores.append(maps.score)
                if maps.covered.mean() < 0.5 and scorer.policy.layout == "ensemble":
                    log.info("%s: %.0f%% of the image is outside the %d windows; --windows grid covers every pixel",
                             os.path.basename(dis), 100 * (1 - maps.covered.mean()), len(maps.windows))
            if stop.signal is not None and len(scores) < len(pairs):
                raise Interrupted(f"stopped by {stop.signal} after {len(scores)} of {len(pairs)} pairs: their maps "
                                  f"(.png and .npz each) are in {folder}; a pair is written whole or not at all",
                                  128 + signal.Signals[stop.signal].value)
    log.info("wrote the maps of %d pairs to %s (*_maps.png, *_maps.npz)", len(pairs), folder)
    return scores


def main(argv: list[str] | None = None) -> list[float]:
    """Score the pairs; under torchrun every process scores a share (by reference) and rank 0 reports them all."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = parse_predict_options(argv)
    with process_group(opt.run) as info:
        return run(opt, info)


def run(opt: PredictConfig, info: DistInfo) -> list[float]:
    mapping = load_mapping(opt.mapping) if opt.mapping else None  # before anything slow
    pairs, mos = pairs_of(opt)
    check_outputs(opt, pairs)  # before anything slow: nothing is scored that could not be written
    if opt.maps and info.enabled:
        raise AHIQError("--maps writes each pair's files in one process; run predict.py without torchrun")
    progress = None if opt.maps else job_progress(opt, pairs, info)  # an earlier run's progress: before the model
    device = info.device
    if opt.backend == "onnxruntime":
        scorer = onnx_scorer_for(opt, device)
    else:
        checkpoint = scoring_checkpoint(opt)
        scorer = scorer_for(opt, checkpoint, policy_of(opt, checkpoint.config.crop_size), device,
                            configure_device(opt.run, device), opt.mos_range)
    weights = scorer.weights() if mapping is not None or progress is not None else None  # once, when asked for
    note = mapping.check_model(weights, opt.allow_other_mapping) if mapping is not None else None
    if note and info.is_main:
        log.warning(note)
    if progress is not None:
        progress.bind(weights)
    if opt.maps:
        scores = np.asarray(write_maps(scorer, pairs, opt.maps, opt.batch_size, opt.num_workers))
    else:  # shared over the processes of a torchrun job (engine/jobs.py); one process: all of them
        with StopRequest() as stop:  # a stop finishes the batch (recorded beside --csv) and says how far it got
            out = score_list(scorer, scorer.file_pairs(pairs), info, opt.batch_size, opt.num_workers, progress,
                             lambda: stop.signal)
        if out is None:  # another rank: rank 0 reports
            return []
        scores = out.preds
    if mos is not None and len(scores) > 1:
        report_metrics(opt, scores, mos)
    unit = "normalised, higher is better"
    if opt.mos_scale:
        scores = scorer.to_mos(scores)
        unit = "DMOS units, lower is better" if scorer.labels_are_dmos else "MOS units, higher is better"
    if mapping is not None:
        scores = mapping(scores)
        unit = mapping.units
    if scorer.warning:
        unit = f"{unit}; {scorer.warning}"
    print(table(pairs, scores, unit))
    if opt.identical:
        print(f"an image against itself: mean {np.mean(scores):.4f} (min {np.min(scores):.4f}, max "
              f"{np.max(scores):.4f}) over {len(scores)} image(s), {unit}: the score of no visible distortion for "
              "this checkpoint (not 1: docs/reporting.md)")
    if opt.csv:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["dis", "ref", "score"])
        writer.writerows([d, r, f"{s:.9g}"] for (d, r), s in zip(pairs, scores))
        atomic_write(opt.csv, buf.getvalue())
    if progress is not None:
        progress.finish()
    return [float(s) for s in scores]


def job_progress(opt: PredictConfig, pairs: list[tuple[str, str]], info: DistInfo) -> Progress | None:
    """With --csv, every finished batch recorded beside it (:class:`engine.jobs.Progress`), keyed by the pairs (a
    digest of their paths) and the options that change scores; without --csv nothing is kept."""
    if not opt.csv:
        return None
    return Progress(opt.csv, {"pairs": digest(f"{d}\t{r}" for d, r in pairs), "options": opt.values(RESULT)}, info,
                    opt.resume, opt.overwrite, len(pairs))


if __name__ == "__main__":
    run_cli(main)
