#!/bin/sh
# Train AHIQ on PIPAL with the official protocol (200 epochs, batch 4, Adam 1e-4, cosine T_max 50 iterations).
#   PIPAL=DIR: the folder `python -m tools.prepare_pipal --out DIR` wrote (default datasets/PIPAL); train.py finds
#   its folders and lists through the pipal preset (--dataset pipal --data_root DIR). Folders or lists given as
#   arguments (--train_ref_path ..., --val_list ...) win.
#   NPROC=K: K processes (GPUs) on this machine through torchrun; NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT for
#   several machines. GPU_IDS=-1 trains on the CPU; NAME=run folder name (default: train.py's, checkpoints/ahiq_train).
#   Every other default is train.py's own (options/). Extra arguments go to train.py.
set -e
cd "$(dirname "$0")"
. tools/setup_env.sh
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}
set -- \
    --dataset pipal \
    --data_root "${PIPAL:-datasets/PIPAL}" \
    ${NAME:+--name "$NAME"} \
    ${GPU_IDS:+--gpu_ids "$GPU_IDS"} \
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
