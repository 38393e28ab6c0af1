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
set -- \
    --dataset pipal \
    --data_root "${PIPAL:-datasets/PIPAL}" \
    ${NAME:+--name "$NAME"} \
    ${GPU_IDS:+--gpu_ids "$GPU_IDS"} \
    "$@"
. tools/launch.sh
ahiq_launch train.py "$@"
