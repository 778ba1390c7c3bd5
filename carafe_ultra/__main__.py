"""``python -m carafe_ultra models [NAME]``: where the shipped model YAMLs are, for the ``yolo`` command line."""

from __future__ import annotations

import argparse

from .integration import model_dir, model_yaml


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m carafe_ultra", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="print the path of a shipped YAML, or list them all")
    models.add_argument("name", nargs="?", help="e.g. yolov8n-carafe.yaml (a YOLO scale letter may be added)")
    args = parser.parse_args(argv)
    if args.name:
        print(model_yaml(args.name))
    else:
        for path in sorted(model_dir().glob("*.yaml")):
            print(path)


if __name__ == "__main__":
    main()
