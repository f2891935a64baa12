"""The `keras-deepvit benchmark` command: parse options, run jobs, print tables.

Every (backend, model, batch size, mode) is one job in its own process (Keras
fixes its backend at import), with `KERAS_BACKEND` set; the PyTorch reference
contestants run inside the same process, interleaved with the Keras ones (see
`keras_deepvit.benchmark.worker`). With `--memory` (the default) each
contestant's peak memory is measured in a separate short process of its own.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from keras_deepvit.allocator import ALLOCATOR_ENV, CHOICES, allocator_choice, retain_freed_memory
from keras_deepvit.benchmark.table import COLUMNS, format_table, summarize
from keras_deepvit.cpuinfo import cpu_flags, cpu_model, read_cpuinfo

DEFAULT_MODELS = ("pit_s", "deepvit_s", "refiner_s")
BACKENDS = ("tensorflow", "jax", "torch")
DTYPES = ("float32", "mixed_float16", "mixed_bfloat16")


def current_backend():
    """The backend Keras would pick, without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    config = os.path.join(
        os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")), "keras.json"
    )
    try:
        with open(config) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def _csv(text):
    return [item.strip() for item in text.split(",") if item.strip()]


def add_arguments(parser):
    """Adds the benchmark options to an `argparse` parser."""
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), metavar="NAMES",
        help="comma-separated registered names (default: %(default)s)",
    )
    parser.add_argument(
        "--backends", default=None, metavar="NAMES",
        help="comma-separated Keras backends, each run in its own process "
        "(default: the current one, from KERAS_BACKEND or keras.json)",
    )
    parser.add_argument("--batch-sizes", default="8", metavar="INTS", help="default: %(default)s")
    parser.add_argument(
        "--image-size", type=int, default=None, metavar="INT",
        help="square input size (default: each model's own)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median; default: 5)")
    parser.add_argument(
        "--warmup", type=int, default=3,
        help="untimed steps per contestant first: one alone (it compiles), the rest in "
        "interleaved rounds (default: 3)"
    )
    parser.add_argument("--modes", default="infer,train", help="infer, train or both (default)")
    parser.add_argument(
        "--keras-variants", default=None, metavar="NAMES",
        help="restrict the Keras compilation variants (tensorflow: xla,graph; jax: xla; "
        "torch: eager,compile); default: all of the backend's",
    )
    parser.add_argument(
        "--no-torch", action="store_true", help="skip the PyTorch reference (Keras only)"
    )
    parser.add_argument(
        "--no-torch-compile", action="store_true", help="skip the torch.compile reference"
    )
    parser.add_argument(
        "--memory", action=argparse.BooleanOptionalAction, default=True,
        help="measure each contestant's peak memory in a separate process (default: on)",
    )
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="default: float32")
    parser.add_argument(
        "--mixed-precision", action="store_true",
        help="shorthand for --dtype mixed_float16 on a GPU, mixed_bfloat16 on CPU",
    )
    parser.add_argument(
        "--remat", action="store_true",
        help="build the Keras models with rematerialize_blocks=True (training memory)",
    )
    parser.add_argument(
        "--exported", action="store_true",
        help="also time the exported inference artifacts (SavedModel by TensorFlow, ONNX by "
        "onnxruntime; written on the TensorFlow backend: keras_deepvit.benchmark.exported_side)",
    )
    parser.add_argument(
        "--allocator", default=None, choices=CHOICES,
        help="the workers' C allocator, for every contestant alike: 'retain' keeps freed memory "
        "for reuse, set by backend (keras_deepvit.allocator; the default), 'single-heap' on one "
        "heap whatever the backend (the PyTorch reference's fastest), 'system' leaves glibc's defaults "
        "(default: $KERAS_DEEPVIT_ALLOCATOR, else retain)",
    )
    parser.add_argument("--json", default=None, metavar="OUT", help="write all results here")
    parser.add_argument(
        "--in-process", action="store_true",
        help="run the jobs in this process (only the current backend; no memory probes)",
    )
    return parser


def machine_header(machine, image_size=None):
    """The line above a results table: CPU model, its `cpuinfo.CPU_FLAGS` (+ present, - absent), input size.

    Example:
    >>> machine_header({"cpu": "EPYC", "cores": 2, "cpu_flags": {"avx2": True, "avx512f": False}}, 448)
    'CPU: EPYC, 2 cores; flags +avx2 -avx512f; image size 448'
    """
    flags = machine.get("cpu_flags")
    flag_text = " ".join(("+" if on else "-") + name for name, on in flags.items()) if flags else "unknown"
    size = f"{image_size}" if image_size else "each model's own"
    return f"CPU: {machine['cpu']}, {machine['cores']} cores; flags {flag_text}; image size {size}"


def machine_info():
    """CPU model and flags, core count, Python and library versions (no framework import)."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    flags = None
    text = read_cpuinfo()
    if text is not None:
        flags = cpu_flags(text)
        cpu = cpu_model(text) or cpu
    versions = {}
    for package in ("keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "versions": versions,
    }


def _run_subprocess(spec, backend, module="keras_deepvit.benchmark.worker"):
    with tempfile.TemporaryDirectory(prefix="keras_deepvit_bench_") as tmp:
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        process = subprocess.run(
            [sys.executable, "-m", module, spec_path, out_path],
            env=env, capture_output=True, text=True,
        )
        if process.returncode != 0 or not os.path.exists(out_path):
            tail = (process.stderr or process.stdout or "")[-2000:]
            raise RuntimeError(f"benchmark worker failed ({backend}, {spec['model']}):\n{tail}")
        with open(out_path) as f:
            return json.load(f)


def run_benchmark(
    models=DEFAULT_MODELS, backends=None, batch_sizes=(8,), image_size=None, repeats=5,
    warmup=3, modes=("infer", "train"), keras_variants=None, torch_variants=("eager", "sdpa", "compile"),
    memory=True, dtype="float32", model_kwargs=None, in_process=False, log=print, gemm_size=2048,
    exported=False,
):
    """Runs every job; returns `{"machine", "gemm_peak", "results", "rows"}`.

    `rows` are `table.summarize` dicts, `results` the workers' raw results;
    `gemm_size` is the matrix size of the GEMM-peak measurement; `exported`
    adds the exported contestants (`exported_side`) to the inference results.
    """
    from keras_deepvit.benchmark.peak import gemm_peak
    from keras_deepvit.zoo.records import RECORDS

    backends = list(backends or [current_backend()])
    if in_process and backends != [current_backend()]:
        raise ValueError(f"--in-process runs only the current backend ({current_backend()}).")
    unknown = [m for m in models if m not in RECORDS]
    if unknown:
        raise ValueError(f"Unknown model(s) {unknown}; see `keras-deepvit list`.")
    wrong = [b for b in backends if b not in BACKENDS]
    if wrong:
        raise ValueError(f"--backends must name some of {', '.join(BACKENDS)}; got {wrong}.")
    gpu = False
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        torch_variants = ()
    peak_dtype = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}[dtype]
    if not gpu and peak_dtype == "float16":
        # PyTorch has no fast float16 GEMM on a CPU: a 2048-sized product takes minutes.
        gemm_size = min(gemm_size, 512)
    peak = gemm_peak(size=gemm_size, device="cuda" if gpu else "cpu", dtype=peak_dtype)
    machine = machine_info()
    machine["allocator"] = allocator_choice()
    log(f"Machine: {machine['cpu']}, {machine['cores']} cores; "
        f"{peak_dtype} GEMM peak {peak['peak']:.0f} GFLOP/s "
        f"(torch {peak['torch'] and round(peak['torch'])}, numpy {peak['numpy'] and round(peak['numpy'])}); "
        f"allocator {machine['allocator']}")

    results, rows = [], []
    memory_cache = {}
    for name in models:
        size = image_size or RECORDS[name].size
        for batch in batch_sizes:
            block = []
            for mode in modes:
                for backend in backends:
                    spec = dict(
                        model=name, image_size=size, batch=batch, mode=mode, repeats=repeats,
                        warmup=warmup, dtype=dtype, torch_variants=list(torch_variants),
                        keras_variants=list(keras_variants) if keras_variants else None,
                        model_kwargs=model_kwargs or None, seed=0,
                    )
                    started = time.perf_counter()
                    if in_process:
                        from keras_deepvit.benchmark.worker import run_job

                        result = run_job(spec)
                    else:
                        result = _run_subprocess(spec, backend)
                    result["wall_s"] = time.perf_counter() - started
                    if memory and not in_process:
                        result["memory"] = {}
                        for label in result["contestants"]:
                            key = (label, name, size, batch, mode, backend if label.startswith("keras") else "")
                            if key not in memory_cache:
                                probe = dict(spec, memory_probe=label, repeats=0, warmup=1)
                                try:
                                    out = _run_subprocess(probe, backend if label.startswith("keras") else "torch")
                                    entry = out["contestants"].get(label, {})
                                    value = entry.get("device_peak_mb")
                                    if value is None and entry.get("peak_rss_mb") is not None:
                                        value = entry["peak_rss_mb"] - (entry.get("base_rss_mb") or 0)
                                    memory_cache[key] = value
                                except RuntimeError as error:
                                    result["errors"][f"memory {label}"] = str(error)[-300:]
                                    memory_cache[key] = None
                            result["memory"][label] = memory_cache[key]
                    for label, error in result["errors"].items():
                        log(f"  ! {backend} {name} {mode} {label}: {error.splitlines()[0][:200]}")
                    row = summarize(result, peak["peak"])
                    results.append(result)
                    rows.append(row)
                    block.append(row)
                    log(f"  {name} b{batch} {mode} {backend}: Keras {row['Keras variants']}; "
                        f"torch eager {_short(row['torch eager'])}, sdpa {_short(row['torch SDPA'])}, "
                        f"compile {_short(row['torch.compile'])} ({result['wall_s']:.0f} s)")
            if exported and "infer" in modes:
                from keras_deepvit.benchmark import exported_side

                spec = dict(model=name, image_size=size, batch=batch, repeats=repeats,
                            warmup=warmup, model_kwargs=model_kwargs or None, seed=0)
                try:
                    out = _run_subprocess(spec, "tensorflow", "keras_deepvit.benchmark.exported_side")
                except RuntimeError as error:
                    out = {"contestants": {}, "rel_l2_vs_keras": {},
                           "errors": {"exported": str(error)[-300:]}}
                exported_side.attach(results[-len(block):], out)
                log(f"  {name} b{batch} infer {exported_side.describe(out)}")
            log("")
            log(format_table(block))
            log("")
    return {"machine": machine, "gemm_peak": peak, "dtype": dtype, "results": results, "rows": rows}


def _short(value):
    return "-" if value is None else f"{value:.1f}"


def run(args):
    """Runs the benchmark for parsed `args`; returns the exit status."""
    if getattr(args, "allocator", None):
        # The workers read it at start (`keras_deepvit.allocator`).
        os.environ[ALLOCATOR_ENV] = args.allocator
    allocator_choice()  # a wrong value fails here, before any job starts
    if args.in_process:
        retain_freed_memory()
    models = _csv(args.models)
    backends = _csv(args.backends) if args.backends else None
    try:
        batch_sizes = [int(b) for b in _csv(args.batch_sizes)]
    except ValueError:
        raise ValueError(f"--batch-sizes must be comma-separated ints, got {args.batch_sizes!r}.")
    modes = _csv(args.modes)
    if not modes or any(m not in ("infer", "train") for m in modes):
        raise ValueError(f"--modes must be infer, train or infer,train; got {args.modes!r}.")
    if any(b < 1 for b in batch_sizes) or args.repeats < 1 or args.warmup < 1:
        raise ValueError("--batch-sizes, --repeats and --warmup must be positive.")
    dtype = args.dtype
    if args.mixed_precision:
        try:
            import torch

            dtype = "mixed_float16" if torch.cuda.is_available() else "mixed_bfloat16"
        except ImportError:
            dtype = "mixed_bfloat16"
    torch_variants = () if args.no_torch else (
        ("eager", "sdpa") if args.no_torch_compile else ("eager", "sdpa", "compile")
    )
    report = run_benchmark(
        models=models, backends=backends, batch_sizes=batch_sizes, image_size=args.image_size,
        repeats=args.repeats, warmup=args.warmup, modes=modes,
        keras_variants=_csv(args.keras_variants) if args.keras_variants else None,
        torch_variants=torch_variants, memory=args.memory and not args.in_process, dtype=dtype,
        model_kwargs={"rematerialize_blocks": True} if args.remat else None,
        in_process=args.in_process, exported=args.exported,
    )
    machine = report["machine"]
    print(f"## Results ({dtype}; {machine['cpu']}, {machine['cores']} cores; "
          + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + ")")
    print()
    print(machine_header(machine, args.image_size))
    print()
    print(format_table(report["rows"]))
    print()
    print("img/s: median of the timed rounds; Keras img/s is the best Keras variant; "
          "% GEMM peak = FLOPs/img x img/s / measured GEMM peak "
          f"({report['gemm_peak']['peak']:.0f} GFLOP/s); peak MB: "
          + ("device memory" if report["gemm_peak"]["device"] != "cpu" else
             "process peak RSS minus the RSS after the framework imports") +
          ", one separate process per contestant.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: v for k, v in report.items()}, f, indent=1, default=str)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-deepvit benchmark",
        description="Images/s of the Keras models against our PyTorch reference modules.",
    )
    return add_arguments(parser)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image_size is not None and args.image_size < 1:
        parser.error(f"--image-size must be a positive int, got {args.image_size}.")
    try:
        return run(args)
    except ValueError as error:
        parser.exit(2, f"keras-deepvit benchmark: error: {error}\n")


__all__ = ["COLUMNS", "add_arguments", "main", "run", "run_benchmark"]
