"""Every command the README and the docs show, so that they cannot drift from the code.

Blocks marked ``run`` (```` ```bash run ````, ```` ```python run ````) are run as they stand, in a scratch folder
that has the checkout's scripts/.
The others show what needs a GPU, a dataset or hours: each of their commands is checked against what would run it
(our command line's parser, Ultralytics' configuration keys and modes, the Makefile's targets, the package's extras,
Ray's options), and each Python block compiles and its imports import. A command nothing can check fails the test.
"""

import ast
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from carafe_ultra.__main__ import parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "NOTES.md"]
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```\s*$", re.M | re.S)
SCRIPTS = {"scripts/ablate.py": "ablate", "scripts/benchmark.py": "benchmark"}
# The job array's variables, as SLURM sets them for one task.
VARIABLES = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}
NOT_HERE = {"sbatch"}  # SLURM's submit command: not installed here, nothing to check it against


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    run: bool
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} {self.language}{' run' if self.run else ''}"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            found.append(Block(page, text[: match.start()].count("\n") + 1, match.group(1),
                               "run" in match.group(2).split(), match.group(3)))
    return found


BLOCKS = blocks()
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "YOLO_OFFLINE": "1"}


def test_the_pages_have_blocks_of_every_kind():
    assert len(BLOCKS) > 30
    assert {(b.language, b.run) for b in BLOCKS} >= {("bash", True), ("bash", False), ("python", True),
                                                      ("python", False), ("yaml", False), ("text", False)}


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.run], ids=str)
def test_runnable_blocks_run(block, tmp_path):
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")  # a scratch folder that looks like a checkout to the commands
    command = ["bash", "-euo", "pipefail", "-c", block.text] if block.language == "bash" else [
        sys.executable, "-c", block.text]
    run = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


@pytest.mark.parametrize("block", [b for b in BLOCKS if not b.run and b.language in ("bash", "python", "yaml")],
                         ids=str)
def test_every_other_command_is_one_that_exists(block):
    if block.language == "yaml":
        assert yaml.safe_load(block.text)
    elif block.language == "python":
        tree = ast.parse(block.text)
        imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        exec(compile(ast.Module(imports, type_ignores=[]), str(block), "exec"), {})
    else:
        commands = shell_commands(block.text)
        assert commands, block
        for argv in commands:
            check(argv)


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, ``$(...)`` replaced by what the
    inner command prints (after it is checked too) and the job array's variables by example values."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        for inner in re.findall(r"\$\(([^)]*)\)", line):
            check(shlex.split(inner))
            printed = subprocess.run(shlex.split(inner), env=ENV, capture_output=True, text=True, timeout=300)
            assert printed.returncode == 0, printed.stderr[-2000:]
            line = line.replace(f"$({inner})", printed.stdout.strip())
        line = re.sub(r"\$(\w+)", lambda m: VARIABLES[m.group(1)], line)
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(argv)
    return commands


def check(argv: list[str]) -> None:
    """Fail unless ``argv`` is a command the project's own parsers (or the tool's) accept."""
    program, *args = argv
    if program == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
        assert set(args) <= targets, f"no make target {set(args) - targets}"
    elif program == "python" and args[:2] == ["-m", "carafe_ultra"]:
        parse(args[2:])
    elif program == "python" and args and args[0] in SCRIPTS:
        parse([SCRIPTS[args[0]], *args[1:]])
    elif program == "python" and args[:2] == ["-m", "pip"] or program == "pip":
        check_pip(args[2:] if program == "python" else args)
    elif program == "yolo":
        check_yolo(args)
    elif program == "ray":
        help_text = subprocess.run(["ray", args[0], "--help"], env=ENV, capture_output=True, text=True).stdout
        options = [a.split("=")[0] for a in args[1:] if a.startswith("--")]
        assert all(option in help_text for option in options), (argv, help_text[-1000:])
    elif program not in NOT_HERE:
        pytest.fail(f"no check for the command {argv}: add one to tests/test_docs.py")


def parse(args: list[str]) -> None:
    try:
        parser().parse_args(args)
    except SystemExit as exit:
        pytest.fail(f"python -m carafe_ultra {' '.join(args)}: the parser refused it (status {exit.code})")


def check_pip(args: list[str]) -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for requirement in args:
        named = re.fullmatch(r"carafe-ultra\[([\w,]+)\]", requirement)
        if named:
            assert set(named.group(1).split(",")) <= extras, requirement
    assert args[0] in ("install", "download"), args


def check_yolo(args: list[str]) -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT, MODES, check_dict_alignment

    mode, *pairs = args
    assert mode in MODES, f"yolo {mode}: not one of {MODES}"
    overrides = dict(pair.split("=", 1) for pair in pairs)
    check_dict_alignment(DEFAULT_CFG_DICT, overrides)  # raises on a key Ultralytics does not know
    if overrides.get("model", "").endswith(".yaml"):
        from carafe_ultra.yamls import find_model_yaml

        find_model_yaml(ROOT / overrides["model"] if (ROOT / overrides["model"]).is_file() else overrides["model"])
