"""Print where the pinned backbone weights can come from: 'files', 'hub', or 'random' (used by demo.sh)."""
from __future__ import annotations

import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split

import argparse
import socket

from models import VIT_TAGS, BackboneSource, ModelConfig
from options.defaults import CHECKPOINTS


def backbone_check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Print where the pinned backbone weights can come from: files, hub or "
                                            "random.")
    p.add_argument("--checkpoints_dir", default=CHECKPOINTS, help="where download.sh put backbones/")
    p.add_argument("--patch_size", type=int, default=8, choices=tuple(VIT_TAGS), help="ViT patch size")
    return p


def main(argv: list[str] | None = None) -> str:
    args = backbone_check_parser().parse_args(argv)
    source = BackboneSource(True, checkpoints_dir=args.checkpoints_dir)
    if all(source.files(ModelConfig(patch_size=args.patch_size))):
        answer = "files"
    else:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
            answer = "hub"
        except OSError:
            answer = "random"
    print(answer)
    return answer


if __name__ == "__main__":
    main()
