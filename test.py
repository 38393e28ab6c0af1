"""Score a list of image pairs with AHIQ; reproduce the NTIRE 2022 FR submission (``sh test.sh``).

The work is in evaluate.py (importable under a name the standard library does not use); ``python test.py --help``
lists the options (options/test_options.py).
"""
import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split
from evaluate import main
from utils.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
