#!/bin/sh
# The main job on an embedded demo dataset: generate a small synthetic full-reference dataset (PIPAL layout),
# train AHIQ briefly, test on held-out reference images, and print SRCC/PLCC and where everything is.
# About 2.5-3 minutes on 2 CPU cores (6 epochs; DEMO_EPOCHS=N for more); uses a GPU when one is there. Each run
# replaces the previous one's folder (demo_runs/demo). See README, "Quick start".
set -e
cd "$(dirname "$0")"
. tools/setup_env.sh
DATA=demo_data
RUN=demo
CKPTS=demo_runs
if [ -d "$CKPTS/$RUN" ]; then
    echo "replacing the previous demo run in $CKPTS/$RUN"
    rm -rf "${CKPTS:?}/$RUN"
fi
$PY -m tools.make_synthetic --out "$DATA" --n_refs 12 --size 64 --split 8 2 2
if $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then GPU=0; else GPU=-1; fi
BACKBONES=$($PY -m tools.backbone_check --checkpoints_dir checkpoints)
if [ "$BACKBONES" = "random" ]; then
    echo "NOTE: the pretrained backbone weights cannot be had here (no checkpoints/backbones/ files, no hub access)."
    echo "      The demo runs with RANDOM backbones: it shows the pipeline working, not AHIQ's real accuracy."
    WEIGHTS="--no_pretrained"
else
    echo "using the pretrained backbones ($BACKBONES)"
    WEIGHTS=""
fi
COMMON="--checkpoints_dir $CKPTS --name $RUN --crop_size 48 --gpu_ids $GPU --num_workers 2 --num_avg_val 1 $WEIGHTS"
$PY train.py $COMMON --train_ref_path $DATA/ref --train_dis_path $DATA/dis --train_list $DATA/train.txt \
    --val_ref_path $DATA/ref --val_dis_path $DATA/dis --val_list $DATA/val.txt \
    --n_epoch "${DEMO_EPOCHS:-6}" --batch_size 8 --learning_rate 3e-4 --T_max 1000 --save_interval 100
$PY test.py $COMMON --test_ref_path $DATA/ref --test_dis_path $DATA/dis --test_list $DATA/test.txt \
    --n_ensemble 5 --test_file_name test_predictions.txt --worst 3 --report
echo
echo "demo done:"
echo "  predictions   $CKPTS/$RUN/test_predictions.txt (metrics in test_predictions_metrics.json)"
echo "  report        $CKPTS/$RUN/test_predictions_report.html (one page: metrics, figures, a sortable table)"
echo "  figures       $CKPTS/$RUN/test_predictions_scatter.png, test_predictions_worst.png (worst 3, with maps)"
echo "  checkpoints   $CKPTS/$RUN/best.pth, last.pth"
echo "  TensorBoard   tensorboard --logdir $CKPTS/$RUN/tensorboard"
echo "The held-out part has 2 reference images (32 pairs): too few for 95% intervals, which need 20 images of 5"
echo "references (test.py says so in its log and report); a real test list gets them, per distortion type too."
if [ "$BACKBONES" = "random" ]; then
    echo "With random backbones the held-out correlations are expected near chance (README, 'Quick start')."
fi
