"""Write the synthetic full-reference demo dataset (see data/synthetic.py).

    python -m tools.make_synthetic --out demo_data --n_refs 12 --size 64
"""
from __future__ import annotations

import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split

from data.synthetic import generate
from options.tool_options import synthetic_parser
from utils.errors import run_cli


def main(argv: list[str] | None = None) -> dict[str, str]:
    args = synthetic_parser().parse_args(argv)
    paths = generate(args.out, args.n_refs, args.size, tuple(args.split))
    print(f"synthetic dataset in {args.out}: " + ", ".join(f"{k} {v}" for k, v in paths.items()))
    return paths


if __name__ == "__main__":
    run_cli(main)
