"""Scoring a list as a job (test.py, predict.py): shared over the processes of a torchrun job, every finished batch
recorded, and continued after a stop (``--resume``), so a million-pair scoring run survives a preemption and uses
every GPU it has.

- Sharing (:func:`shard`): with running BatchNorm statistics, whole reference groups per process (each reference
  window computed on one process); the released computation (``--bn_stats batch``, ``--random_windows official``)
  depends on each batch's images, so there each process takes whole batches of the list in list order: every batch
  is the batch one process would form, and the predictions are the same.
- Recording (:class:`Progress`): ``.{results}.progress/`` beside the results (predict.py: beside ``--csv``) holds
  a header (what is scored, with which result-changing options) and, per process and attempt, one ``index,score``
  line per image, appended after each batch; a stop loses at most the batch in flight. ``--resume`` reads every
  line back (any number of processes wrote them), scores the rest and merges; the folder is removed once the
  results are written.
- Stopping: SIGINT/SIGTERM finish the current batch; all processes then agree that the run stopped
  (:func:`utils.distributed.worst_outcome`) and end with exit code 3 and one line.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable

import numpy as np

from data.pair_dataset import PairDataset
from engine.loop import Predictions, ScoringStopped, reference_shards
from engine.scorer import Scorer
from utils.distributed import DistInfo, barrier, failed_elsewhere, gather_arrays, worst_outcome
from utils.errors import AHIQError, Interrupted
from utils.files import append_text, atomic_write, read_json, read_text
from utils.records import digest, require_same

FORMAT = "ahiq-progress-1"


def shard(dataset: PairDataset, indices: list[int], scorer: Scorer, info: DistInfo, batch_size: int) -> list[int]:
    """This process's share of ``indices`` (see the module's docstring)."""
    if info.world_size == 1:
        return list(indices)
    if scorer.bn_stats == "batch" or dataset.policy.official:  # the policy the crops come from
        blocks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
        return [i for block in blocks[info.rank::info.world_size] for i in block]
    return reference_shards(indices, dataset.reference_key, info.world_size)[info.rank]


class Progress:
    """The finished images of one results file (see the module's docstring) of a list of ``n`` images. ``header``:
    what decides the results (the list by content, the result options); :meth:`bind` adds the model's weights once
    it is built. A ``resume`` continues only when both are what the stopped run recorded; without ``resume`` an
    earlier run's progress is refused unless ``overwrite``."""

    def __init__(self, results: str, header: dict, info: DistInfo, resume: bool, overwrite: bool, n: int) -> None:
        self.folder = os.path.join(os.path.dirname(results), f".{os.path.basename(results)}.progress")
        self.info, self.n = info, n
        self.header_file = os.path.join(self.folder, "header.json")
        if info.is_main:
            if os.path.isdir(self.folder) and not resume:
                if not overwrite:
                    raise AHIQError(f"{results}: an interrupted run's scores of {len(self.recorded())} images are in "
                                    f"{self.folder}; pass --resume to continue it, or --overwrite to start again")
                shutil.rmtree(self.folder)
            if os.path.isdir(self.folder):
                self._check(header)
            else:
                os.makedirs(self.folder)
                atomic_write(self.header_file, json.dumps({"format": FORMAT, **header}, indent=1, default=str))
        barrier(info)  # every process sees the folder rank 0 checked or made
        self.done = self.recorded()
        self._path = os.path.join(self.folder, f"rank{info.rank}-pid{os.getpid()}.txt")
        append_text(self._path, "")  # this process's file, made now: a folder it cannot write is said before scoring

    def _saved(self) -> dict:
        return read_json(self.header_file, "the progress header of a scoring run",
                         f"move {self.folder} away, or pass --overwrite to start again", FORMAT)

    def _check(self, now: dict) -> None:
        require_same(self._saved(), now, self.folder, "holds the progress of another run",
                     "run with what it was started with, or --overwrite to start again")

    def bind(self, weights: dict[str, str]) -> None:
        """The digests of the weights that score (:meth:`engine.scorer.Scorer.weights`): recorded by a new run,
        compared by a resumed one (a checkpoint or backbone file replaced at the same path is another model)."""
        if self.info.is_main:
            saved = self._saved()
            if "weights" in saved:
                self._check({"weights": weights})
            else:
                atomic_write(self.header_file, json.dumps({**saved, "weights": weights}, indent=1, default=str))
        barrier(self.info)

    def recorded(self) -> dict[int, float]:
        """Every recorded ``index,score`` line of every process and attempt, each checked: an index of the list,
        recorded once, a finite score. Only a file's last line may be torn by a kill (no line end): it is skipped."""
        done: dict[int, float] = {}
        where: dict[int, str] = {}
        for name in sorted(os.listdir(self.folder)) if os.path.isdir(self.folder) else []:
            if not name.endswith(".txt"):
                continue
            path = os.path.join(self.folder, name)
            lines = read_text(path).splitlines(keepends=True)
            for number, line in enumerate(lines, 1):
                if not line.endswith("\n") and number == len(lines):
                    continue
                index, score = _record(line)
                problem = ("is not an 'index,score' record" if index is None else
                           f"names image {index}, outside the list's {self.n}" if not 0 <= index < self.n else
                           f"scores image {index} {score}" if not math.isfinite(score) else
                           f"records image {index} again (also {where[index]})" if index in where else None)
                if problem:
                    raise AHIQError(f"{path}, line {number}: {problem}; this progress cannot be trusted: restore "
                                    "the file, or pass --overwrite to score the list again")
                done[index], where[index] = score, f"{name}, line {number}"
        return done

    def record(self, index: list[int], scores: list[float]) -> None:
        """One finished batch, on disk before the next one starts (flushed: a killed process keeps it)."""
        append_text(self._path, "".join(f"{i},{s!r}\n" for i, s in zip(index, scores)))  # a full disk: --resume

    def finish(self) -> None:
        """The results are written: the progress is no longer needed."""
        if self.info.is_main:
            shutil.rmtree(self.folder, ignore_errors=True)


def score_list(scorer: Scorer, dataset: PairDataset, info: DistInfo, batch_size: int, num_workers: int,
               progress: Progress | None = None, stop: Callable[[], str | None] | None = None
               ) -> Predictions | None:
    """Every image of ``dataset`` scored, shared over the job's processes, those ``progress`` holds taken from it;
    rank 0 gets the predictions in list order, the others None. ``stop()`` names the signal that asked to stop, or
    None; then every process ends at its next batch and :class:`utils.errors.Interrupted` (exit code 3) says how far
    the run got."""
    done = progress.done if progress is not None else {}
    todo = [i for i in range(len(dataset)) if i not in done]
    mine = shard(dataset, todo, scorer, info, batch_size)
    out, outcome, failure = None, "done", None
    try:
        out = scorer.score_dataset(dataset, batch_size, num_workers, progress=info.is_main, indices=mine,
                                   stop=(lambda: stop() is not None) if stop is not None else None,
                                   on_batch=progress.record if progress is not None else None)
    except ScoringStopped:
        outcome = "stopped"
        recorded = progress.recorded() if progress is not None else {}
        if mine and all(i in recorded for i in mine):  # the stop came with this share's last batch: it is done
            outcome, out = "done", _predictions(dataset, mine, recorded)
    except AHIQError as err:  # e.g. a damaged image of this share: the other processes must hear of it
        outcome, failure = "failed", err
    outcome = worst_outcome(outcome, info)  # what was recorded stays: --resume continues once the cause is fixed
    if outcome == "failed":
        raise failure or failed_elsewhere()
    if outcome == "stopped":
        name = (stop and stop()) or "another process"
        if progress is None:
            raise Interrupted(f"stopped by {name}; nothing was kept (predict.py records its progress with --csv)", 3)
        finished = len(progress.recorded())
        raise Interrupted(f"stopped by {name} after {finished} of {len(dataset)} images: their scores are in "
                          f"{progress.folder}; continue with --resume (the same command)", 3)
    index, preds, labels = gather_arrays(info, out.index, out.preds, out.labels)
    if not info.is_main:
        return None
    earlier = _predictions(dataset, sorted(done), done)
    index = np.concatenate([earlier.index, index.astype(np.int64)])
    preds, labels = np.concatenate([earlier.preds, preds]), np.concatenate([earlier.labels, labels])
    order = np.argsort(index, kind="stable")
    return Predictions(index[order], [dataset.names[i] for i in index[order]], preds[order], labels[order])


def list_digest(dataset: PairDataset) -> str:
    """The content of a scored list: each row's name, reference file and label, in order (a list edited in place,
    reordered or relabelled is another list)."""
    raw = dataset.raw_scores if dataset.raw_scores is not None else [None] * len(dataset)
    return digest(f"{name}\t{os.path.basename(ref)}\t{label!r}" for (name, _, ref), label in zip(dataset.pairs, raw))


def _record(line: str) -> tuple[int | None, float]:
    parts = line.rstrip("\n").split(",")
    try:
        return (int(parts[0]), float(parts[1])) if len(parts) == 2 else (None, math.nan)
    except ValueError:
        return None, math.nan


def _predictions(dataset: PairDataset, indices: list[int], scores: dict[int, float]) -> Predictions:
    """Predictions of ``indices`` from recorded ``scores`` (their labels from the dataset, NaN without any)."""
    index = np.asarray(indices, dtype=np.int64)
    labels = dataset.labels[index] if dataset.labels is not None else np.full(len(index), np.nan)
    return Predictions(index, [dataset.names[i] for i in indices], np.array([scores[i] for i in indices],
                                                                            dtype=np.float64), labels)
