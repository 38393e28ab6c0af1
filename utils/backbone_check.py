"""Print where the pinned backbone weights can come from: 'files', 'hub', or 'random' (used by demo.sh)."""
from __future__ import annotations

import argparse
import os
import socket

from options.base_options import backbone_files


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoints_dir", default="checkpoints")
    p.add_argument("--patch_size", type=int, default=8)
    args = p.parse_args()
    if all(os.path.isfile(f) for f in backbone_files(args.checkpoints_dir, args.patch_size)):
        print("files")
        return
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        print("hub")
    except OSError:
        print("random")


if __name__ == "__main__":
    main()
