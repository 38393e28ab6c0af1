#!/bin/sh
# Reproduce the NTIRE 2022 FR test predictions with the released PIPAL checkpoint (run `sh download.sh` first).
# Set PIPAL_TEST_REF / PIPAL_TEST_DIS to the NTIRE 2022 FR test folders; GPU_IDS=-1 runs on the CPU.
# Writes checkpoints/ahiq_pipal/ntire22_fr_test.txt and the submission package in results/ntire22_submission/.
set -e
cd "$(dirname "$0")"
. scripts/setup_env.sh
exec $PY test.py \
    --test_ref_path "${PIPAL_TEST_REF:-PIPAL/NTIRE2022_FR_Testing_Ref/}" \
    --test_dis_path "${PIPAL_TEST_DIS:-PIPAL/NTIRE2022_FR_Testing_Dis/}" \
    --test_list "${TEST_LIST:-data/lists/ntire22_fr_test_names.txt}" \
    --checkpoints_dir ./checkpoints \
    --name ahiq_pipal \
    --patch_size 8 \
    --n_ensemble 20 \
    --batch_size 10 \
    --random_windows official \
    --gpu_ids "${GPU_IDS:-0}" \
    --test_file_name ntire22_fr_test.txt \
    --submission results/ntire22_submission \
    "$@"
