#!/usr/bin/env bash
# The GPU runs behind the README's GPU table: mixed-precision training of PiT-S,
# DeepViT-S and Refiner-ViT-S at batch 64 (the memory point), PiT-S inference at
# batch 256, and the peak device memory of DeepViT-S training with and without
# rematerialisation.
#
#   bash tools/benchmark_gpu.sh OUT_DIR [STEP ...]
#
# STEPs (default, in this order): train_jax infer_jax train_torch infer_torch
# train_tensorflow memory memory_remat; train_tensorflow is skipped (with a line saying
# so) where TensorFlow sees no GPU. Not in the default list: train_torch_compile (Keras'
# `torch.compile` variant of the PyTorch backend's PiT-S training step, held to
# COMPILE_TIMEOUT seconds, default 300). Each step is one `keras-deepvit benchmark` call
# and writes OUT_DIR/<step>.json and OUT_DIR/<step>.log as it finishes, so a run cut short
# keeps what it measured. The Keras backend and PyTorch share the GPU inside one job (the
# reference runs in the Keras job's process): JAX is held to 45% of the memory instead of
# its default 75%, and TensorFlow takes memory as it needs it instead of all at once.
set -uo pipefail

out=${1:?usage: bash tools/benchmark_gpu.sh OUT_DIR [STEP ...]}
shift
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(train_jax infer_jax train_torch infer_torch train_tensorflow memory memory_remat)
mkdir -p "$out"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
export TF_FORCE_GPU_ALLOW_GROWTH=${TF_FORCE_GPU_ALLOW_GROWTH:-true}
export PYTHONUNBUFFERED=1
# The command itself imports Keras: a GPU machine without TensorFlow needs another default.
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
python=${PYTHON:-python3}

bench() {  # step name, then benchmark options
    local name=$1
    shift
    echo "== $name: $*"
    ${limit:-} "$python" -m keras_deepvit.cli benchmark --json "$out/$name.json" "$@" 2>&1 \
        | grep -v -e '^I0000' -e '^WARNING: All log' | tee "$out/$name.log"
}

tensorflow_sees_gpu() {
    "$python" -c "import tensorflow as tf, sys; sys.exit(not tf.config.list_physical_devices('GPU'))" \
        >/dev/null 2>&1
}

variants() {  # with Keras' torch.compile variant too, PiT-S training alone did not finish in 4.5 min on an H100 host
    [ "$1" = torch ] && echo "--keras-variants eager"
}

for step in "${steps[@]}"; do
    case $step in
        train_jax | train_torch | train_tensorflow)
            if [ "$step" = train_tensorflow ] && ! tensorflow_sees_gpu; then
                echo "== $step: skipped, TensorFlow sees no GPU here (a CPU-only build?)"
                continue
            fi
            bench "$step" --models pit_s,deepvit_s,refiner_s --backends "${step#train_}" \
                --batch-sizes 64 --modes train --mixed-precision --no-memory --repeats 10 \
                --warmup 3 $(variants "${step#train_}") ;;
        train_torch_compile)
            limit="timeout ${COMPILE_TIMEOUT:-300}" bench "$step" --models pit_s --backends torch \
                --batch-sizes 64 --modes train --mixed-precision --no-memory --repeats 10 \
                --warmup 3 --keras-variants compile ;;
        infer_jax | infer_torch)
            bench "$step" --models pit_s --backends "${step#infer_}" --batch-sizes 256 \
                --modes infer --mixed-precision --no-memory --repeats 10 --warmup 3 \
                $(variants "${step#infer_}") ;;
        memory)
            bench "$step" --models deepvit_s --backends jax --batch-sizes 64 --modes train \
                --mixed-precision --memory --repeats 1 --warmup 1 --no-torch-compile ;;
        memory_remat)
            bench "$step" --models deepvit_s --backends jax --batch-sizes 64 --modes train \
                --mixed-precision --memory --remat --repeats 1 --warmup 1 --no-torch ;;
        *)
            echo "unknown step: $step" >&2
            exit 2 ;;
    esac
done
