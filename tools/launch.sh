# Sourced by train.sh and test.sh: ahiq_launch SCRIPT ARGS runs SCRIPT (train.py, test.py) with $PY, or under
# torchrun when NPROC (processes on this machine) or NNODES (machines: NODE_RANK, MASTER_ADDR, MASTER_PORT) ask for
# several. One process per GPU: NPROC larger than this machine's GPUs stops at once (unless --gpu_ids -1: the CPU).
ahiq_launch() {
    script=$1
    shift
    NPROC=${NPROC:-1}
    NNODES=${NNODES:-1}
    GPU=""; prev=""
    for arg in "$@"; do  # the --gpu_ids that SCRIPT will see (the last one given)
        [ "$prev" = "--gpu_ids" ] && GPU=$arg
        case $arg in --gpu_ids=*) GPU=${arg#--gpu_ids=} ;; esac
        prev=$arg
    done
    if [ "$NPROC" -gt 1 ] && [ "$GPU" != "-1" ]; then
        NGPU=$($PY -c 'import torch; print(torch.cuda.device_count())')
        if [ "$NPROC" -gt "$NGPU" ]; then
            echo "error: NPROC=$NPROC processes need one GPU each, but this machine has $NGPU; set NPROC to at most $NGPU, or GPU_IDS=-1 to run on the CPU" >&2
            exit 2
        fi
    fi
    if [ "$NPROC" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
        if [ "$NNODES" -gt 1 ]; then
            RDZV="--nnodes=$NNODES --node_rank=${NODE_RANK:?set NODE_RANK} --master_addr=${MASTER_ADDR:?set MASTER_ADDR} --master_port=${MASTER_PORT:-29500}"
        else
            RDZV="--standalone"
        fi
        # shellcheck disable=SC2086
        exec $PY -m torch.distributed.run $RDZV --nproc_per_node="$NPROC" "$script" "$@"
    fi
    exec $PY "$script" "$@"
}
