#!/bin/sh
# Reproduce the NTIRE 2022 FR test predictions: the released PIPAL checkpoint scored as the released test.py scores
# (its random windows, its batches, ResNet BatchNorm on each call's statistics; docs/fidelity.md).
#   First: `sh download.sh`, and `python -m tools.prepare_pipal --pipal_root ... --out DIR --test_ref ... --test_dis
#   ...` (PIPAL=DIR, default datasets/PIPAL): the test folders and list are found through the pipal preset.
#   GPU_IDS=-1 runs on the CPU; NPROC=K shares the images over K GPUs (torchrun; whole batches of the list per
#   process, so the same predictions as one process up to float rounding). --resume continues a stopped run.
#   Extra arguments go to test.py (e.g. --ckpt FILE, --amp); every other setting is test.py's default (options/).
#   The model is the checkpoint's own (an official file holds none: the paper's, patch 8; add --patch_size 16).
# Writes checkpoints/ahiq_pipal/ntire22_fr_test.txt and the submission package in results/ntire22_submission/.
set -e
cd "$(dirname "$0")"
. tools/setup_env.sh
echo "test.sh: replaying the released test.py: its random window stream (--random_windows official) and per-call BatchNorm (--bn_stats batch); --n_ensemble and --batch_size are test.py's defaults (options/)"
set -- \
    --dataset pipal \
    --data_root "${PIPAL:-datasets/PIPAL}" \
    --random_windows official \
    --bn_stats batch \
    ${GPU_IDS:+--gpu_ids "$GPU_IDS"} \
    --test_file_name ntire22_fr_test.txt \
    --submission results/ntire22_submission \
    "$@"
. tools/launch.sh
ahiq_launch test.py "$@"
