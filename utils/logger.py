"""Logging to the console and ``{run_dir}/log.txt`` (rank 0 only; other ranks show warnings)."""
from __future__ import annotations

import logging
import os


def setup_logging(run_dir: str | None = None, is_main: bool = True) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console)
    if run_dir and is_main:
        os.makedirs(run_dir, exist_ok=True)
        file = logging.FileHandler(os.path.join(run_dir, "log.txt"))
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(file)
