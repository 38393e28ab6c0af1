"""The defaults that several options and entry points share, each written once: the official protocol's numbers
(the released train.py and test.py; README's training section) and where runs are stored.

The option modules take their defaults from here or write them in the option itself (each option's default is in
exactly one of the two); the Python API and the hub take theirs from the options (:func:`options.test_options.
scoring_defaults`), so an edit here or in an option reaches train.py, test.py, protocol.py, predict.py and the API
alike. The library (``data/``, ``models/``, ``engine/loop.py``) holds no protocol default: it is handed values.
"""
import os

from utils.errors import AHIQError

SEED = 1919  # the official setup_seed(1919): training, the test ensemble's random windows, new split files
TEST_BATCH = 10  # the official test batch; with --random_windows official it also decides the windows
N_ENSEMBLE = 20  # crops averaged per test image (official)
NUM_AVG_VAL = 5  # fixed windows averaged per validation image (official)
CROPS_PER_FORWARD = 50  # crop pairs per model forward when scoring: memory, never the result
# Paths nobody gives are found from the checkout (or $AHIQ_HOME), not from the working folder.
HOME = os.environ.get("AHIQ_HOME") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINTS = os.path.join(HOME, "checkpoints")  # run folders; download.sh's released checkpoint and backbones/


def check_home() -> None:
    """$AHIQ_HOME, when set, is an absolute path: a relative one would move with the working folder."""
    if not os.path.isabs(HOME):
        raise AHIQError(f"AHIQ_HOME={HOME}: give an absolute path (a relative one depends on the working folder), "
                        f"e.g. AHIQ_HOME={os.path.abspath(HOME)}")


RELEASED_NAME = "ahiq_pipal"  # the released checkpoint's folder (download.sh): scored from, never trained into
TRAIN_NAME, PROTOCOL_NAME = "ahiq_train", "ahiq_protocol"  # train.py's and protocol.py's default run folders
