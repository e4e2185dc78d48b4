#!/usr/bin/env bash
# GPU check of saescope on one CUDA GPU (sized for an H100: under 10 minutes once the venv exists). Not a test.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# 1. the CUDA sparse training step against the dense reference (benchmarks/train_step_cuda.py: agreement of the
#    loss and every gradient, step time, peak memory, fraction of the encoder-GEMM bound);
# 2. a short `saescope run --preset gemma-scope-2-270m --device cuda` on layer GPU_CHECK_LAYERS at a reduced token
#    count (activations cached first, so the model stream and training are timed apart), then a summary: tokens/s
#    of the model stream and of training, peak GPU memory (polled with nvidia-smi: what the process held, the
#    allocator's cache included), and the encoder-GEMM bound's share of the training time.
#
# On a bare machine it makes the Makefile's venv (.venv) first. Without a CUDA GPU it stops before installing
# anything, with exit status 2. Settings (environment variables, defaults in brackets):
#   GPU_CHECK_TOKENS [1048576]   training tokens per dictionary of the short run
#   GPU_CHECK_LAYERS [6]         layers of the short run (the preset's sites are every site of every layer)
#   GPU_CHECK_WIDTHS [16k,262k]  widths of the short run (the preset's)
#   GPU_CHECK_OUT    [runs/gpu-check]  where the run and the logs go (a folder that exists is refused)
#   TORCH_SPEC       passed to make (the torch build of the venv)
set -euo pipefail

TOKENS="${GPU_CHECK_TOKENS:-1048576}"
LAYERS="${GPU_CHECK_LAYERS:-6}"
WIDTHS="${GPU_CHECK_WIDTHS:-16k,262k}"
OUT="${GPU_CHECK_OUT:-runs/gpu-check}"
PY=.venv/bin/python

fail() { echo "gpu_check: $*" >&2; exit 2; }

[ -f pyproject.toml ] && [ -d src/saescope ] || fail "run it from the saescope repository root (no src/saescope here)"
command -v nvidia-smi >/dev/null 2>&1 || fail "no nvidia-smi: this machine has no NVIDIA driver, so no CUDA GPU to check"
nvidia-smi --query-gpu=name --format=csv,noheader >/dev/null 2>&1 || fail "nvidia-smi finds no GPU"
[ -e "$OUT" ] && fail "$OUT exists (an earlier check's output): move it away or set GPU_CHECK_OUT to a new folder"

if ! "$PY" -c "import saescope, torch" >/dev/null 2>&1; then
    echo "== making the venv (.venv, as the Makefile does; a few minutes)"
    make .venv/.saescope-installed ${TORCH_SPEC:+TORCH_SPEC="$TORCH_SPEC"}
fi
"$PY" - <<'EOF' || fail "torch in .venv has no CUDA (a CPU build?): remake it with a CUDA build, e.g. make clean-venv; make .venv/.saescope-installed TORCH_SPEC='torch==2.13.0'"
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF

mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

echo "== 1. the sparse step against the dense reference (train_step_cuda.py)"
PYTHONPATH=src "$PY" benchmarks/train_step_cuda.py --widths 16384,65536 2>&1 | tee "$OUT/train_step_cuda.txt"

echo "== 2. saescope run --preset gemma-scope-2-270m --device cuda: layers $LAYERS, widths $WIDTHS, $TOKENS tokens"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/memory_used_mib.txt" &
POLL=$!
trap 'kill "$POLL" 2>/dev/null || true' EXIT
status=0
timeout 480 .venv/bin/saescope run --preset gemma-scope-2-270m --device cuda --runs-dir "$OUT" --name run \
    --layers "$LAYERS" --widths "$WIDTHS" --tokens "$TOKENS" --activations cache \
    --eval-tokens 131072 --eval-loss-windows 32 --index-tokens 0 2>&1 | tee "$OUT/run.txt" || status=$?
kill "$POLL" 2>/dev/null || true
[ "$status" -eq 0 ] || fail "the run failed or passed 480 s (exit $status); see $OUT/run.txt"

echo "== summary"
"$PY" - "$OUT" <<'EOF'
"""Tokens/s of the model stream and of training, peak GPU memory, and the encoder-GEMM bound's share."""
import json
import sys
from pathlib import Path

import torch

out = Path(sys.argv[1])
run = out / "run"
stages = json.loads((run / "stages.json").read_text())
config = json.loads((run / "run_config.json").read_text())
dictionaries = [json.loads(p.read_text())["dictionary"] for p in sorted((run / "train" / "saes").glob("*/config.json"))]
widths = [int(d["width"]) for d in dictionaries]
d_ins = [int(d["d_in"]) for d in dictionaries]
batch, tokens = int(config["batch_size"]), int(config["tokens"])
steps = tokens // batch
train_s = float(stages["train"]["seconds"])
print(f"model stream (activations stage): {stages['activations'].get('tokens_per_second', float('nan')):,.0f} tokens/s")
print(f"training: {len(widths)} dictionaries, {steps} steps of {batch}: {tokens / train_s:,.0f} tokens/s "
      f"({train_s:.1f} s, the stage's whole time: reading the cache and any refit pass included)")
used = [int(line) for line in (out / "memory_used_mib.txt").read_text().split() if line.strip().isdigit()]
print(f"peak GPU memory in use during the run: {max(used, default=0):,} MiB (nvidia-smi, allocator cache included)")

torch.backends.cuda.matmul.allow_tf32 = False
def gemm_seconds(d_in: int, width: int) -> float:
    x = torch.randn(batch, d_in, device="cuda")
    w = torch.randn(d_in, width, device="cuda")
    y = torch.empty(batch, width, device="cuda")
    for _ in range(3):
        torch.mm(x, w, out=y)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        torch.mm(x, w, out=y)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 10 / 1000

bound_s = steps * sum(gemm_seconds(d, w) for d, w in zip(d_ins, widths, strict=True))
print(f"encoder-GEMM bound (one fp32 batch x d_in x width GEMM per dictionary per step, TF32 off): {bound_s:.1f} s, "
      f"{100 * bound_s / train_s:.1f}% of the training time")
for stage, info in stages.items():
    print(f"stage {stage}: {info['seconds']} s")
EOF
echo "gpu_check: done; logs in $OUT"
