"""The `keras-deepvit` command: train, list the models, convert checkpoints, run the demo, benchmark.

Usage:
    keras-deepvit train [--model pit_ti] [--data digits|tfds:NAME|FOLDER] [--epochs N] ...
    keras-deepvit list [--family {deepvit,refiner,pit}]
    keras-deepvit convert CHECKPOINT --model NAME -o OUT.weights.h5
    KERAS_BACKEND=jax keras-deepvit demo [--model pit_ti] [--image-size 224]
    keras-deepvit benchmark [--models pit_s,deepvit_s,refiner_s] [--backends jax,tensorflow,torch]
    keras-deepvit analyze --model NAME [--weights imagenet|PATH|MODEL.keras] --images DIR --out DIR
    keras-deepvit predict IMAGE... --model NAME [--weights imagenet|PATH] [--top 5] [--json]
    keras-deepvit export MODEL_OR_FILE -o PATH [--format tf_saved_model|onnx|litert] [--weights imagenet|PATH|none]

The backend is whatever Keras picks (`KERAS_BACKEND`, then `~/.keras/keras.json`).
Besides seeding the demo's random weights, the command changes one setting of its
own process: the C allocator keeps freed memory for reuse
(`keras_deepvit.allocator.retain_freed_memory`; `KERAS_DEEPVIT_ALLOCATOR=system`
turns that off), which saves every step's page faults on a CPU.
"""

import argparse
import os

from keras_deepvit.allocator import ALLOCATOR_ENV, retain_freed_memory
from keras_deepvit.zoo.records import RECORDS
from keras_deepvit.zoo.registry import FAMILY_NAMES as FAMILIES
from keras_deepvit.zoo.registry import list_models


def model_table(names):
    """Rows of the `list` command: name, params, input size, official source.

    Example:
    >>> print(model_table(["pit_ti"])[1])
    pit_ti  4,847,272  224x224  naver-ai/pit pit_ti
    """
    header = ("name", "params", "input", "source")
    rows = [header] + [
        (name, f"{RECORDS[name].params:,}", f"{RECORDS[name].size}x{RECORDS[name].size}",
         RECORDS[name].source)
        for name in names
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [
        "  ".join([row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].ljust(widths[2]), row[3]])
        for row in rows
    ]


def _list(args):
    print("\n".join(model_table(list_models(args.family))))
    return 0


def _demo(args):
    # Imported here so `list` does not pay for scikit-image and Pillow.
    from keras_deepvit import demo

    result = demo.classify_sample_images(args.model, image_size=args.image_size, seed=args.seed)
    print("\n".join(demo.format_report(result)))
    return 0


def _convert(args):
    from keras_deepvit import convert

    input_shape = (args.input_size[0], args.input_size[1], 3) if args.input_size else None
    report = convert.convert_checkpoint(
        args.checkpoint, args.model, args.output, prefer_ema=not args.no_ema, input_shape=input_shape
    )
    print("\n".join(convert.format_report(report)))
    return 0


def _train(args):
    import json
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from keras_deepvit.training import job

    try:
        model_kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"--model-kwargs must be a JSON object, got {args.model_kwargs!r} ({error}).") from None
    if not isinstance(model_kwargs, dict):
        raise ValueError(f"--model-kwargs must be a JSON object, got {args.model_kwargs!r}.")
    config = job.TrainingConfig(
        model=args.model, data=args.data, weights=args.weights, epochs=args.epochs,
        batch_size=args.batch_size, image_size=args.image_size, mixed_precision=args.mixed_precision,
        distribute=args.distribute, coordinator=args.coordinator, num_processes=args.num_processes,
        process_id=args.process_id, output=args.output, learning_rate=args.learning_rate,
        warmup_epochs=args.warmup_epochs, augment=args.augment, drop_path_rate=args.drop_path_rate,
        teacher=args.teacher,
        model_kwargs=model_kwargs, seed=args.seed, verbose=args.verbose,
    )
    result = job.run_training(config)
    print("\n".join(job.format_summary(result)))
    return 0


def _add_train(commands):
    train = commands.add_parser(
        "train", help="train or fine-tune a model with the papers' recipe (default: PiT-Ti on the embedded digits)"
    )
    train.add_argument("--model", default="pit_ti", choices=list_models(), metavar="NAME",
                       help="a name from `keras-deepvit list` (default: pit_ti)")
    train.add_argument("--data", default="digits",
                       help="'digits' (embedded, offline; the default), 'tfds:NAME[:SPLIT]', or a folder "
                       "with one sub-folder of images per class")
    train.add_argument("--weights", default=None,
                       help="start from 'imagenet' or a checkpoint/.keras path (a new head when the classes differ)")
    train.add_argument("--epochs", type=int, default=10, help="default: 10")
    train.add_argument("--batch-size", type=int, default=64, help="global batch size (default: 64)")
    train.add_argument("--image-size", type=int, default=None, metavar="INT",
                       help="square input size (default: 32 for digits, else the model's)")
    train.add_argument("--mixed-precision", choices=("float16", "bfloat16"), default=None)
    train.add_argument("--distribute", choices=("auto", "none", "data_parallel", "multi_host"), default="auto",
                       help="auto (default): every device when there are several; multi_host: a JAX cluster")
    train.add_argument("--coordinator", metavar="HOST:PORT", help="multi_host: process 0's address")
    train.add_argument("--num-processes", type=int, metavar="N", help="multi_host: processes in the cluster")
    train.add_argument("--process-id", type=int, metavar="I", help="multi_host: this process, 0 to N-1")
    train.add_argument("--output", default="keras-deepvit-run", help="run directory (default: ./keras-deepvit-run)")
    train.add_argument("--learning-rate", type=float, default=None,
                       help="base learning rate at batch 512, scaled linearly (default: 5e-4)")
    train.add_argument("--warmup-epochs", type=float, default=None,
                       help="linear warm-up (default: 5, at most a third of the run)")
    train.add_argument("--augment", choices=("auto", "deit", "light", "none"), default="auto",
                       help="auto: DeiT's recipe, or a light one below 64 px (default)")
    train.add_argument("--drop-path-rate", type=float, default=None, help="default: the paper's")
    train.add_argument("--teacher", metavar="MODEL.keras",
                       help="distilled PiT only: learn from this trained model too (DeiT's hard distillation)")
    train.add_argument("--model-kwargs", default=None, metavar="JSON",
                       help='other family arguments, e.g. \'{"depth": [1, 2, 1]}\'')
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="fit's verbosity (1: progress bars)")
    train.set_defaults(run=_train)


def _benchmark(args):
    from keras_deepvit.benchmark import runner

    return runner.run(args)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {value}")
    return value


def _predict(args):
    import json
    import sys

    from keras_deepvit import predict

    model = predict.load_classifier(args.model, args.weights)
    results = predict.predict_files(args.images, model, args.model, top=args.top, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        out, err = predict.format_results(results)
        print("\n".join(out))
        if err:
            print("\n".join(err), file=sys.stderr)
    # 1 when any image failed; usage errors (bad --model/--weights) exit 2 in `main`.
    return 1 if any("error" in result for result in results) else 0


def _add_predict(commands):
    predict = commands.add_parser(
        "predict", help="top-k ImageNet classes of image files (timm's eval resize and crop per model)"
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    predict.add_argument("--model", required=True, choices=list_models(), metavar="NAME",
                         help="a name from `keras-deepvit list`")
    predict.add_argument("--weights", default="imagenet", metavar="imagenet|PATH",
                         help="'imagenet' (default; downloaded once) or a checkpoint/.keras/.weights.h5 path")
    predict.add_argument("--top", type=_positive_int, default=5, help="classes per image (default: 5)")
    predict.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch (default: 32)")
    predict.add_argument("--json", action="store_true",
                         help="print one JSON list of {image, predictions, note?, error?}")
    predict.set_defaults(run=_predict)


def _analyze(args):
    import json
    import logging

    import keras

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from keras_deepvit.analysis import report
    from keras_deepvit.zoo.registry import create_model

    if args.weights and str(args.weights).endswith(".keras"):
        model = keras.saving.load_model(args.weights, compile=False)
    elif args.model is None:
        raise ValueError("analyze needs --model NAME, or --weights MODEL.keras (a saved model).")
    else:
        shape = (args.image_size, args.image_size, 3) if args.image_size else None
        model = create_model(args.model, weights=args.weights, input_shape=shape)
    images, names = report.load_images(args.images, report.model_input_size(model), limit=args.max_images)
    summary, written = report.write_report(
        model, images, args.out, threshold=args.threshold, image_names=names,
        plots=not args.no_plots, batch_size=args.batch_size,
    )
    print(json.dumps({k: summary[k] for k in ("model", "images", "similar_blocks", "threshold")}))
    print("\n".join(written))
    return 0


def _add_analyze(commands):
    analyze = commands.add_parser(
        "analyze", help="attention-collapse metrics and plots of a model on a folder of images"
    )
    analyze.add_argument("--model", default=None, choices=list_models(), metavar="NAME",
                         help="a name from `keras-deepvit list` (optional with --weights MODEL.keras)")
    analyze.add_argument("--weights", default=None, metavar="imagenet|PATH|MODEL.keras",
                         help="default: random weights; a .keras file is loaded as the whole model")
    analyze.add_argument("--images", required=True, metavar="DIR", help="folder of image files")
    analyze.add_argument("--out", default="analysis-report", metavar="DIR",
                         help="output folder (default: ./analysis-report)")
    analyze.add_argument("--image-size", type=int, default=None, metavar="INT",
                         help="build --model NAME at this square input size")
    analyze.add_argument("--threshold", type=float, default=0.9,
                         help="similarity above which adjacent blocks count as similar (default: 0.9)")
    analyze.add_argument("--max-images", type=_positive_int, default=32, help="default: 32")
    analyze.add_argument("--batch-size", type=_positive_int, default=16, help="default: 16")
    analyze.add_argument("--no-plots", action="store_true", help="write metrics.json only (no matplotlib)")
    analyze.set_defaults(run=_analyze)


def _export(args):
    from keras_deepvit.export import check_supported, export

    check_supported(args.format)  # before building or loading the model
    if args.model.endswith(".keras"):
        import keras

        model = keras.saving.load_model(args.model)
    elif args.model in list_models():
        from keras_deepvit.zoo import create_model

        weights = None if args.weights == "none" else args.weights
        model = create_model(args.model, weights=weights)
    else:
        raise ValueError(
            f"MODEL_OR_FILE must be a name from `keras-deepvit list` or a .keras file; got {args.model!r}."
        )
    export(model, args.output, format=args.format, input_dtype=args.input_dtype)
    print(f"wrote {args.format} to {args.output}")
    return 0


def _add_export(commands):
    from keras_deepvit.export import FORMATS, INPUT_DTYPES

    export = commands.add_parser(
        "export", help="write a float32 inference artifact (SavedModel, ONNX, LiteRT) taking RGB 0-255"
    )
    export.add_argument("model", metavar="MODEL_OR_FILE", help="a name from `keras-deepvit list`, or a .keras file")
    export.add_argument("-o", "--output", required=True,
                        help="output: a directory (tf_saved_model) or a .onnx / .tflite file")
    export.add_argument("--format", default="tf_saved_model", choices=FORMATS,
                        help="tf_saved_model (TensorFlow, JAX), onnx (TensorFlow, JAX), litert (TensorFlow)")
    export.add_argument("--weights", default="imagenet", metavar="imagenet|PATH|none",
                        help="with a zoo name: 'imagenet' (default), a checkpoint path, or 'none' (random)")
    export.add_argument("--input-dtype", default="float32", choices=INPUT_DTYPES,
                        help="input of ONNX/LiteRT artifacts (a SavedModel has both endpoints)")
    export.set_defaults(run=_export)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-deepvit",
        description="DeepViT, Refiner-ViT and PiT for Keras 3 (TensorFlow, JAX, PyTorch).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(commands)

    listing = commands.add_parser("list", help="print the registered models")
    listing.add_argument("--family", choices=FAMILIES, help="only this family")
    listing.set_defaults(run=_list)

    demo = commands.add_parser(
        "demo", help="classify scikit-image's sample photos (offline; random weights for now)"
    )
    demo.add_argument(
        "--model", default="pit_ti", choices=list_models(), metavar="NAME",
        help="a name from `keras-deepvit list` (default: pit_ti)",
    )
    demo.add_argument(
        "--image-size", type=int, default=None, metavar="INT",
        help="square input size (default: the model's, 224 for all but the *_384/*_448 variants)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    demo.set_defaults(run=_demo)

    convert = commands.add_parser(
        "convert", help="convert a PyTorch/safetensors checkpoint to a Keras .weights.h5 (or cache .safetensors) file"
    )
    convert.add_argument("checkpoint", help=".pth, .pth.tar, .bin or .safetensors file (no torch needed)")
    convert.add_argument(
        "--model", required=True, choices=list_models(), metavar="NAME",
        help="the registered model the checkpoint belongs to (see `keras-deepvit list`)",
    )
    convert.add_argument("-o", "--output", required=True, help="output path ending in .weights.h5, or .safetensors for the weights='imagenet' cache")
    convert.add_argument(
        "--input-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
        help="build at this input size (position embeddings are resampled)",
    )
    convert.add_argument(
        "--no-ema", action="store_true", help="use the raw weights of a checkpoint that also has EMA ones"
    )
    convert.set_defaults(run=_convert)
    _add_predict(commands)
    _add_analyze(commands)
    _add_export(commands)

    from keras_deepvit.benchmark.runner import add_arguments

    benchmark = commands.add_parser(
        "benchmark",
        help="images/s of the Keras models against the PyTorch reference, in the same run",
    )
    add_arguments(benchmark)
    benchmark.set_defaults(run=_benchmark)
    return parser


def main(argv=None):
    """Runs the command line `argv` (default: `sys.argv[1:]`); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "image_size", None) is not None and args.image_size < 1:
        parser.error(f"--image-size must be a positive int, got {args.image_size}.")
    try:
        if getattr(args, "allocator", None):
            os.environ[ALLOCATOR_ENV] = args.allocator
        retain_freed_memory()
        return args.run(args)
    except (ValueError, TypeError, ImportError, OSError) as error:
        # Invalid combinations (e.g. an image smaller than one patch) and missing
        # optional packages: show the library's message, not a traceback.
        parser.exit(2, f"keras-deepvit {args.command}: error: {error}\n")


if __name__ == "__main__":
    raise SystemExit(main())
