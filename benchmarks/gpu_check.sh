#!/bin/sh
# The GPU check, one script (about 5-8 minutes on one H100-class GPU): CUDA agreement with the CPU, then the
# benchmark with the default 20-crop ensemble on 288x288 images. Prints everything; writes results/gpu_benchmark.json.
set -e
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv
$PY - <<'PY'
import torch
from models import build_model
from utils.engine import score_crops
torch.manual_seed(0)
model = build_model(8, pretrained=False).eval()
dis, ref = (torch.randint(0, 256, (4, 5, 3, 224, 224), dtype=torch.uint8) for _ in range(2))
cpu = score_crops(model, dis, ref)
gpu = score_crops(model.cuda(), dis, ref)
bf16 = score_crops(model, dis, ref, amp_dtype=torch.bfloat16)
print("CUDA fp32 vs CPU max rel. deviation:", ((gpu.cpu() - cpu).abs() / cpu.abs()).max().item())
print("CUDA bf16 vs CPU max abs. deviation:", (bf16.cpu() - cpu).abs().max().item())
PY
mkdir -p results
$PY -m benchmarks.benchmark --device cuda --images 10 --n_ensemble 20 --repeats 3 --out results/gpu_benchmark.json
