#!/bin/sh
# Reproduce the NTIRE 2022 FR test predictions: the released PIPAL checkpoint scored as the released test.py scores
# (its random windows, its batches, ResNet BatchNorm on each call's statistics; docs/fidelity.md).
#   First: `sh download.sh`, and `python -m tools.prepare_pipal --pipal_root ... --out DIR --test_ref ... --test_dis
#   ...` (PIPAL=DIR, default datasets/PIPAL): the test folders and list are found through the pipal preset.
#   GPU_IDS=-1 runs on the CPU. Extra arguments go to test.py (e.g. --ckpt FILE, --amp).
# Writes checkpoints/ahiq_pipal/ntire22_fr_test.txt and the submission package in results/ntire22_submission/.
set -e
cd "$(dirname "$0")"
. scripts/setup_env.sh
echo "test.sh: replaying the released test.py: --n_ensemble 20 --batch_size 10 --random_windows official --bn_stats batch"
exec $PY test.py \
    --dataset pipal \
    --data_root "${PIPAL:-datasets/PIPAL}" \
    --checkpoints_dir ./checkpoints \
    --patch_size 8 \
    --n_ensemble 20 \
    --batch_size 10 \
    --random_windows official \
    --bn_stats batch \
    ${GPU_IDS:+--gpu_ids "$GPU_IDS"} \
    --test_file_name ntire22_fr_test.txt \
    --submission results/ntire22_submission \
    "$@"
