#!/usr/bin/env bash
# Full-size benchmarks on one CUDA GPU (ViT-B and ViT-H at 1024 px, bf16 autocast), then an fp32
# pass of the benchmarks whose equality checks are exact only in fp32. Writes
# benchmarks/results/*-cuda.json (bf16, what docs/performance.md shows) and
# benchmarks/results/cuda-fp32/*-cuda.json, then prints the markdown report.
#
#   bash benchmarks/gpu.sh            # about 20-30 minutes on one A100/H100
#
# Targets checked inside the JSON ("targets"):
#   - ViT-H lora/adapter training, 1024 px, batch 2, activation checkpointing + bf16: peak <= 16 GiB
#     (train_step, rows with checkpointing=yes)
#   - decoder-only training on cached embeddings >= 2,000 prompts/s (cached_embeddings, batch 32 x 8)
#   - prediction >= 25 images/s for ViT-H in bf16 (inference)
#   - predict_batch >= 1.5x a SamPredictor loop (batched_prediction)
#   - cached embeddings >= 90% of the ideal speed-up; checkpointing <= 0.5x peak step memory
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python - <<'PY'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh needs a CUDA device (torch.cuda.is_available() is False)")
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true

status=0
# bf16: the numbers of record (all benchmarks, full sizes)
python benchmarks/run.py --device cuda --dtype bf16 --models vit_b,vit_h || status=1
# fp32: exact equality checks and fp32 speeds of the fast paths
python benchmarks/run.py --device cuda --dtype fp32 --models vit_b,vit_h \
    --only sdpa_attention,batched_prediction,decoder_step,activation_checkpointing \
    --out benchmarks/results/cuda-fp32 || status=1

python benchmarks/report.py
echo
python - <<'PY'
import json, pathlib
for f in sorted(pathlib.Path("benchmarks/results").glob("*-cuda.json")):
    d = json.loads(f.read_text())
    for t in d.get("targets", []):
        print(f"{'MET ' if t['met'] else 'MISS' if t['met'] is False else '--  '} {t['name']}: {t['value']} (target {t['target']})")
    for c in d.get("checks", []):
        if not c["passed"]:
            print(f"FAILED CHECK {f.name}: {c['name']}")
PY
exit $status
