"""Exit 0 when this Python already satisfies the given requirements files (name and version ranges), else print
what is missing and exit 1. Used by setup_env.sh to decide whether anything must be installed; needs only the
standard library."""
from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys

# distributions that other builds of the same library provide under another name (checked by import instead)
IMPORT_NAMES = {"opencv-python-headless": "cv2", "pillow": "PIL"}


def _version(text: str) -> tuple[int, ...]:
    found = re.match(r"\d+(\.\d+)*", text)
    return tuple(int(p) for p in found.group(0).split(".")) if found else ()


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    if name.lower() in IMPORT_NAMES:
        try:
            return getattr(importlib.import_module(IMPORT_NAMES[name.lower()]), "__version__", None)
        except ImportError:
            return None
    return None


def _satisfies(version: str, spec: str) -> bool:
    have = _version(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op, want = re.match(r"(>=|<=|==|<|>)\s*(.+)", clause).groups()
        width = max(len(have), len(_version(want)))
        a, b = (v + (0,) * (width - len(v)) for v in (have, _version(want)))
        if not {">=": a >= b, "<=": a <= b, "==": a == b, "<": a < b, ">": a > b}[op]:
            return False
    return True


def missing(paths: list[str]) -> list[str]:
    problems = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", line).groups()
                version = _installed(name)
                if version is None or not _satisfies(version, spec):
                    problems.append(f"{name}{spec} (found {version or 'none'})")
    return problems


if __name__ == "__main__":
    problems = missing(sys.argv[1:])
    print("\n".join(problems))
    sys.exit(1 if problems else 0)
