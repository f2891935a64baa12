#!/bin/bash
# Peak memory of a Refiner-ViT-S training step (batch 2) per backend, with and without
# rematerialize_blocks, at one image size: `bash docs/benchmarks/memory/run_memory.sh 448 OUT_DIR`.
# Each contestant's peak RSS comes from a process of its own (the benchmark's memory probes).
# Runs the --remat rows only (the PyTorch reference row measures ~13 GB at 448); ALSO_PLAIN=1
# adds the rows without remat (Keras-JAX measured 22 GB there before the fix). Run it alone.
set -euo pipefail
size=${1:-448}
out=${2:-memory-$size}
mkdir -p "$out"
for backend in jax torch tensorflow; do
  variant=xla; [ "$backend" = torch ] && variant=eager
  rows="--remat"; [ "${ALSO_PLAIN:-0}" = 1 ] && rows="--remat none"
  for remat in $rows; do
    [ "$remat" = none ] && remat=""
    name="$out/${backend}${remat:+-remat}.json"
    keras-deepvit benchmark --models refiner_s --backends "$backend" --batch-sizes 2 \
      --image-size "$size" --modes train --keras-variants "$variant" --no-torch-compile \
      --repeats 1 --warmup 1 $remat --json "$name" | tee "${name%.json}.txt"
  done
done
