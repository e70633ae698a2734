#!/usr/bin/env bash
# The GPU benchmarks in one run that fits a short GPU loan:
#
#   bash benchmarks/gpu.sh --wheels DIR --out DIR [--dry-run]
#
#   --wheels DIR  wheels of what the GPU machine lacks (no network there): segment-anything and
#                 pycocotools, made beforehand on a machine with PyPI:
#                     python -m pip download --no-deps -d DIR segment-anything pycocotools
#                 (pycocotools is a compiled wheel: download it for the GPU machine's Python, e.g.
#                 --python-version 3.12 --only-binary :all: when it differs from this machine's)
#   --out DIR     every result goes here: one JSON per part (fp32 parts under DIR/fp32),
#                 summary.md and summary.json, install.log
#   --dry-run     the same code paths on the CPU at tiny sizes (under 3 minutes on a 2-core CPU; the
#                 test suite runs it), plus the FLOP-based time estimate of the GPU run
#
# What it does: (1) installs, with pip from DIR only (--no-index --no-deps, torch pinned), whichever
# of segment-anything and pycocotools does not import, then samadapt itself from this checkout
# without dependencies; it never replaces torch (checked before and after) and uses the preinstalled
# PyTorch, accelerate, peft, timm, safetensors and transformers; (2) runs benchmarks/gpu.py.
#
# Time: about 3.5 minutes on one H100, estimated from FLOPs counted on the meta device
# (`python benchmarks/gpu.py --estimate`: a quarter of the H100's dense bf16 peak sustained, plus
# process starts, model builds and host-side image work); no part starts after 6.5 minutes, so the
# run ends within 8. The targets (in DIR/summary.md):
#   - ViT-H lora/adapter training, 1024 px, batch 2, activation checkpointing + bf16: peak <= 16 GiB
#   - decoder-only training on cached embeddings: >= 2,000 prompts/s (batch 32 x 8 prompts)
#   - ViT-H prediction in bf16: >= 25 images/s
#   - predict_batch vs a SamPredictor loop: >= 1.5x
# and every equality check of the benchmarks (the fp32 pass: SDPA attention, batched prediction,
# activation checkpointing at ViT-H).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bash benchmarks/gpu.sh --wheels DIR --out DIR [--dry-run]"
wheels="" out="" dry=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels="${2:?$usage}"; shift 2 ;;
        --out) out="${2:?$usage}"; shift 2 ;;
        --dry-run) dry=(--dry-run); shift ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "unknown argument $1; $usage" >&2; exit 2 ;;
    esac
done
[ -n "$wheels" ] && [ -n "$out" ] || { echo "$usage" >&2; exit 2; }
[ -d "$wheels" ] || { echo "--wheels $wheels is not a folder" >&2; exit 2; }
wheels="$(cd "$wheels" && pwd)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

torch_before="$("$PY" -c 'import torch; print(torch.__version__)')" || {
    echo "no torch in $("$PY" -c 'import sys; print(sys.executable)' 2>/dev/null || echo "$PY"): this script uses the preinstalled PyTorch" >&2
    exit 2
}
echo "python: $("$PY" -c 'import sys; print(sys.executable)'); torch $torch_before"

# (1) what is missing, from the wheel folder only
missing=()
"$PY" -c 'import segment_anything' 2>/dev/null || missing+=(segment-anything)
"$PY" -c 'import pycocotools.mask' 2>/dev/null || missing+=(pycocotools)
echo "torch==$torch_before" > "$out/constraints.txt"
pip=("$PY" -m pip install --disable-pip-version-check --no-index --find-links "$wheels" --no-deps -c "$out/constraints.txt")
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing from $wheels: ${missing[*]}"
    "${pip[@]}" "${missing[@]}" >> "$out/install.log" 2>&1 || {
        echo "could not install ${missing[*]} from $wheels (see $out/install.log); put their wheels there:" >&2
        echo "    python -m pip download --no-deps -d $wheels ${missing[*]}" >&2
        exit 2
    }
else
    echo "segment-anything and pycocotools are installed already"
fi
# samadapt itself, from this checkout, without dependencies (PYTHONPATH above covers a failed build)
here="$(env -u PYTHONPATH "$PY" -c 'import os, samadapt; print(os.path.dirname(os.path.dirname(samadapt.__file__)))' 2>/dev/null || true)"
if [ "$here" = "$PWD" ]; then
    echo "samadapt is installed from this checkout already"
elif "${pip[@]}" --no-build-isolation -e . >> "$out/install.log" 2>&1; then
    echo "samadapt installed from $PWD (no dependencies)"
else
    echo "note: pip could not install samadapt from $PWD (no setuptools?); it runs from PYTHONPATH" >&2
fi
torch_after="$("$PY" -c 'import torch; print(torch.__version__)')"
if [ "$torch_after" != "$torch_before" ]; then
    echo "torch changed from $torch_before to $torch_after during the installs: stopping" >&2
    exit 2
fi
"$PY" -c 'import samadapt, segment_anything, pycocotools.mask, accelerate, peft, timm, safetensors, psutil' || {
    echo "a module the benchmarks need does not import (above); nothing was run" >&2
    exit 2
}

# (2) the benchmarks
if [ ${#dry[@]} -eq 0 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/nvidia-smi.csv" 2>&1 || true
fi
status=0
"$PY" benchmarks/gpu.py --out "$out" "${dry[@]}" || status=$?
echo
cat "$out/summary.md"
exit $status
