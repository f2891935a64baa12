#!/bin/bash
# The benchmark's memory probes alone (one process per contestant: one warm-up step, then
# one step; peak RSS and the RSS after the framework imports), Refiner-ViT-S training,
# batch 2, without the timed rounds: `bash docs/benchmarks/memory/run_probes.sh 448 OUT_DIR`.
# Produced the *-probe.json files in cpu-448/. Run it alone on the machine.
set -euo pipefail
size=${1:-448}
out=${2:-memory-probes-$size}
mkdir -p "$out"
probe() { # backend contestant remat name
  local spec="$out/$4.spec.json"
  python3 - "$2" "$3" "$size" > "$spec" <<'PY'
import json, sys
label, remat, size = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
print(json.dumps({"model": "refiner_s", "image_size": size, "batch": 2, "mode": "train",
                  "repeats": 0, "warmup": 1, "dtype": "float32", "torch_variants": ["eager"],
                  "keras_variants": [label.split("-", 1)[1]],
                  "model_kwargs": {"rematerialize_blocks": remat}, "seed": 0,
                  "memory_probe": label}))
PY
  KERAS_BACKEND=$1 python -m keras_deepvit.benchmark.worker "$spec" "$out/$4-probe.json"
  echo "$4: $out/$4-probe.json"
}
probe tensorflow keras-xla 1 tensorflow-remat
probe torch keras-eager 1 torch-remat
probe torch keras-eager 0 torch-plain
