"""``python -m carafe_ultra``: the package's command line.

    python -m carafe_ultra models [NAME]           path of a shipped model YAML (or list them)
    python -m carafe_ultra convert MODEL [-o DIR] [--downsample] [--heads] [--upsampler NAME]
                                                   write MODEL with CARAFE in place of nn.Upsample (with
                                                   --downsample, CARAFEDown in place of the neck's strided Convs;
                                                   with --heads, in the task head's own upsampling too: the
                                                   segmentation mask branch, the semantic and depth decoders)
    python -m carafe_ultra ablate [...]            train with each upsampler and compare (scripts/ablate.py)
    python -m carafe_ultra benchmark [...]         side-by-side speed and memory (scripts/benchmark.py)
    python -m carafe_ultra gpu-check [--dry-run]   every GPU check in one run, one report (make gpu-check)
    python -m carafe_ultra show CHECKPOINT IMAGE   what the CARAFE(Down) and DySample layers learned, on an image
"""

from __future__ import annotations

import argparse

from .experiments import ablation, benchmark, gpu_check, show
from .upsamplers import UPSAMPLERS
from .yamls import convert_yaml, model_dir, model_yaml


def _models(args: argparse.Namespace) -> None:
    if args.name:
        try:
            print(model_yaml(args.name))
        except FileNotFoundError as error:
            args.error(str(error))
    else:
        for path in sorted(model_dir().glob("*.yaml")):
            print(path)


def _convert(args: argparse.Namespace) -> None:
    try:
        upsampler = None if args.upsampler == "none" else args.upsampler
        print(convert_yaml(args.model, upsampler, args.out_dir, downsample=args.downsample, heads=args.heads))
    except (FileNotFoundError, ValueError) as error:  # no such model, or no row to replace in it
        args.error(str(error))


def parser() -> argparse.ArgumentParser:
    """The command line. Each command's namespace carries ``error``, its parser's ``error`` method: input found
    wrong after parsing is reported like a parsing error (usage, the message, exit status 2), not a traceback."""
    root = argparse.ArgumentParser(prog="python -m carafe_ultra", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="print the path of a shipped YAML, or list them all")
    models.add_argument("name", nargs="?", help="e.g. yolov8n-carafe.yaml (a YOLO scale letter may be added)")
    models.set_defaults(run=_models, error=models.error)
    convert = commands.add_parser("convert", help="write a model YAML with CARAFE in place of nn.Upsample")
    convert.add_argument("model", help="a stock Ultralytics name (yolo26n-seg.yaml), one of ours, or a path")
    convert.add_argument("-o", "--out-dir", dest="out_dir", default=None, help="folder to write to (default: .)")
    convert.add_argument("--downsample", action="store_true",
                         help="also replace the neck's stride-2 Conv rows (never the backbone's) with CARAFEDown "
                              "(CARAFE++ downsampling): MODEL-carafe-both.yaml")
    convert.add_argument("--heads", action="store_true",
                         help="also swap the task head's own upsampling for --upsampler's module: a segmentation "
                              "head's mask branch (its prototypes' 2x ConvTranspose2d, and YOLO26's P4/P5 resizes), "
                              "the semantic head's x8 resize of its logits, the depth decoder's x2 resizes and 2x "
                              "ConvTranspose2d: MODEL-carafe-head.yaml")
    convert.add_argument("--upsampler", choices=[*UPSAMPLERS, "none"], default="carafe",
                         help="what the upsampling rows become (default: carafe); none leaves them, e.g. with "
                              "--downsample for MODEL-carafe-down.yaml")
    convert.set_defaults(run=_convert, error=convert.error)
    for name, tool, summary in (("ablate", ablation, "train with each upsampler and compare them"),
                                ("benchmark", benchmark, "side-by-side speed and memory measurements"),
                                ("gpu-check", gpu_check, "every check that needs a GPU, in one run and one report"),
                                ("show", show, "draw what a model's CARAFE, CARAFEDown and DySample layers learned, on an image")):
        command = commands.add_parser(name, help=summary, description=tool.__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        tool.add_arguments(command)
        command.set_defaults(run=tool.main, error=command.error)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
