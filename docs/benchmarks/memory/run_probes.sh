#!/bin/bash
# The benchmark's memory probes alone (one process per contestant: one warm-up step, then
# one step; peak RSS and the RSS after the framework imports), Refiner-ViT-S training,
# batch 2 (or $BATCH), without the timed rounds:
#   [BATCH=1] bash docs/benchmarks/memory/run_probes.sh SIZE OUT_DIR [NAME ...]
# NAME: reference, jax-plain, jax-remat, tensorflow-plain, tensorflow-remat, torch-plain,
# torch-remat (default: all). Produced the *-probe.json files in cpu-448/ and cpu-384/.
# Run it alone on the machine; at 448 the reference needs about 13 GB.
set -euo pipefail
size=${1:-448}
batch=${BATCH:-2}
out=${2:-memory-probes-$size}
shift $(( $# > 2 ? 2 : $# ))
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(reference jax-plain jax-remat tensorflow-plain tensorflow-remat torch-plain torch-remat)
mkdir -p "$out"
probe() { # backend contestant remat name
  local spec="$out/$4.spec.json"
  python3 - "$2" "$3" "$size" "$batch" > "$spec" <<'PY'
import json, sys
label, remat, size, batch = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
keras_variants = [label.split("-", 1)[1]] if label.startswith("keras-") else []
print(json.dumps({"model": "refiner_s", "image_size": size, "batch": batch, "mode": "train",
                  "repeats": 0, "warmup": 1, "dtype": "float32", "torch_variants": ["eager"],
                  "keras_variants": keras_variants,
                  "model_kwargs": {"rematerialize_blocks": remat}, "seed": 0,
                  "memory_probe": label}))
PY
  KERAS_BACKEND=$1 python -m keras_deepvit.benchmark.worker "$spec" "$out/$4-probe.json"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); c=r['contestants']; print(sys.argv[2], {k: round(v['peak_rss_mb']-v['base_rss_mb']) for k, v in c.items()}, r['errors'] or '')" "$out/$4-probe.json" "$4"
}
for name in "${names[@]}"; do
  case $name in
    reference) probe torch torch-eager 0 reference ;;
    jax-plain) probe jax keras-xla 0 jax-plain ;;
    jax-remat) probe jax keras-xla 1 jax-remat ;;
    tensorflow-plain) probe tensorflow keras-xla 0 tensorflow-plain ;;
    tensorflow-remat) probe tensorflow keras-xla 1 tensorflow-remat ;;
    torch-plain) probe torch keras-eager 0 torch-plain ;;
    torch-remat) probe torch keras-eager 1 torch-remat ;;
    *) echo "unknown probe $name" >&2; exit 2 ;;
  esac
done
