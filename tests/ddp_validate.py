"""Helper run by tests/test_train.py, alone or as the ranks of a job (tests/forks.py): validates a checkpoint with
train.py's own sharded validation and writes the gathered predictions and metrics (rank 0) to a JSON file. With
STOP_RANK=R in the environment, rank R alone is asked to stop at its first batch: every rank must then stop (each writes
``{out_file}.rank{r}``) instead of waiting for the others in a collective."""
from __future__ import annotations

import json
import os
import sys

import torch

import train
from engine.loop import ScoringStopped
from engine.runtime import backbone_source, device_of
from models import build_from_config
from options.train_options import parse_train_options
from tests.conftest import load_head
from utils.distributed import init_distributed, shutdown


def main(argv: list[str] | None = None) -> None:
    """``OUT_FILE CKPT TRAIN_ARGS...`` (``sys.argv[1:]`` by default)."""
    out_file, ckpt, *argv = sys.argv[1:] if argv is None else argv
    opt = parse_train_options(argv)
    info = init_distributed(device_of(opt), opt.gpu_list)
    config = train.run_config(opt, None).config
    _, _, _, val = train.build_loaders(opt, info, config.crop_size)
    model = build_from_config(config, backbone_source(opt), seed=opt.seed)  # random backbones: as train.py's
    load_head(model, ckpt)
    stop_rank = os.environ.get("STOP_RANK")
    stop = (lambda: True) if stop_rank is not None and int(stop_rank) == info.rank else None
    try:
        metrics, preds, labels = train.validate(model, val, info, opt, None, stop)
    except ScoringStopped:
        with open(f"{out_file}.rank{info.rank}", "w") as f:
            json.dump({"stopped": True, "rank": info.rank}, f)
        shutdown(info, together=True)  # every rank stops: they agreed
        return
    if info.is_main:
        shard = val.indices
        with open(out_file, "w") as f:
            json.dump({"metrics": metrics, "preds": preds.tolist(), "labels": labels.tolist(),
                       "world_size": info.world_size, "rank0_shard": shard}, f)
    shutdown(info, together=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
