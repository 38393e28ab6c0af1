"""The numbers of the official AHIQ protocol (DESIGN.md, section 4) and of scoring, each written once.

options/ takes its defaults from here (edit a default for an ablation there, in the option), and so do the library
(``data/``, ``scoring.py``) and the tools.
"""
import os

SEED = 1919  # the official setup_seed(1919): training, the test ensemble's random windows, new split files
TEST_BATCH = 10  # the official test batch; with --random_windows official it also decides the windows
N_ENSEMBLE = 20  # crops averaged per test image (official)
NUM_AVG_VAL = 5  # fixed windows averaged per validation image (official)
CROPS_PER_FORWARD = 50  # crop pairs per model forward when scoring: memory, never the result
# Paths nobody gives are found from the checkout (or $AHIQ_HOME), not from the working folder.
HOME = os.environ.get("AHIQ_HOME") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINTS = os.path.join(HOME, "checkpoints")  # run folders; download.sh's released checkpoint and backbones/
RELEASED_NAME = "ahiq_pipal"  # the released checkpoint's folder (download.sh): scored from, never trained into
TRAIN_NAME, PROTOCOL_NAME = "ahiq_train", "ahiq_protocol"  # train.py's and protocol.py's default run folders
