#!/bin/sh
# Train AHIQ on PIPAL with the official protocol (200 epochs, batch 4, Adam 1e-4, cosine T_max 50 iterations).
#   PIPAL: the folder `python -m tools.prepare_pipal --out` wrote (default datasets/PIPAL); or each folder:
#   PIPAL_TRAIN_REF / PIPAL_TRAIN_DIS: training reference / distorted folders (all distorted images in one folder)
#   PIPAL_VAL_REF / PIPAL_VAL_DIS:     NTIRE 2021 validation folders
#   NPROC=K: K processes (GPUs) on this machine through torchrun; NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT for
#   several machines. GPU_IDS=-1 trains on the CPU. Extra arguments go to train.py (e.g. --resume, --amp).
set -e
cd "$(dirname "$0")"
. scripts/setup_env.sh
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}
PIPAL=${PIPAL:-datasets/PIPAL}
set -- \
    --train_ref_path "${PIPAL_TRAIN_REF:-$PIPAL/Train_Ref/}" \
    --train_dis_path "${PIPAL_TRAIN_DIS:-$PIPAL/Train_Dis/}" \
    --train_list "${TRAIN_LIST:-data/lists/pipal22_train_mos.txt}" \
    --val_ref_path "${PIPAL_VAL_REF:-$PIPAL/NTIRE2021/Ref/}" \
    --val_dis_path "${PIPAL_VAL_DIS:-$PIPAL/NTIRE2021/Dis/}" \
    --val_list "${VAL_LIST:-data/lists/ntire21_val_mos.txt}" \
    --checkpoints_dir ./checkpoints \
    --name "${NAME:-ahiq_pipal_train}" \
    --patch_size 8 \
    --gpu_ids "${GPU_IDS:-0}" \
    "$@"
GPU=""; prev=""
for arg in "$@"; do  # the --gpu_ids that train.py will see (the last one given)
    [ "$prev" = "--gpu_ids" ] && GPU=$arg
    case $arg in --gpu_ids=*) GPU=${arg#--gpu_ids=} ;; esac
    prev=$arg
done
if [ "$NPROC" -gt 1 ] && [ "$GPU" != "-1" ]; then
    NGPU=$($PY -c 'import torch; print(torch.cuda.device_count())')
    if [ "$NPROC" -gt "$NGPU" ]; then
        echo "error: NPROC=$NPROC processes need one GPU each, but this machine has $NGPU; set NPROC to at most $NGPU, or GPU_IDS=-1 to train on the CPU" >&2
        exit 2
    fi
fi
if [ "$NPROC" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
    if [ "$NNODES" -gt 1 ]; then
        RDZV="--nnodes=$NNODES --node_rank=${NODE_RANK:?set NODE_RANK} --master_addr=${MASTER_ADDR:?set MASTER_ADDR} --master_port=${MASTER_PORT:-29500}"
    else
        RDZV="--standalone"
    fi
    exec $PY -m torch.distributed.run $RDZV --nproc_per_node="$NPROC" train.py "$@"
fi
exec $PY train.py "$@"
