"""One experiment per folder: the settings an ablation's ``--out`` was started with (``settings.json``), and the check
that every later command on that folder repeats them. Runs trained with other epochs, data or weights would sit in
one summary with the first ones, as if they were one experiment; instead such a command stops before anything runs
and names each setting that differs, with both values."""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_text_atomically

RECORD = "settings.json"


class SettingsChanged(ValueError):
    """A command's settings differ from those its ``--out`` folder was started with."""


def check_same_experiment(out: str | Path, record: dict, create: bool = True) -> None:
    """Compare ``record`` (setting name -> JSON-able value) with the one ``out`` was started with; raise
    :class:`SettingsChanged` listing each difference. A folder without a record gets this one when ``create``
    (written once, atomically: shards starting together agree on the first)."""
    from .data import exclusive

    out = Path(out)
    path = out / RECORD
    with exclusive(out):
        if not path.is_file():
            if create:
                write_text_atomically(path, json.dumps(record, indent=2) + "\n")
            return
        recorded = json.loads(path.read_text())
    changed = differences(recorded, json.loads(json.dumps(record)))  # compared as they read back from JSON
    if changed:
        raise SettingsChanged(
            f"{out} holds an experiment started with other settings; repeat them, choose another --out, or give "
            "--restart to delete its runs and start it over:\n" + "\n".join(f"  {line}" for line in changed))


def differences(recorded: dict, current: dict) -> list[str]:
    """One line per setting whose value differs: ``--name: <recorded> when started, <current> now``. Entries that
    are dicts keyed by name (the arms) compare the names both hold."""
    lines = []
    for name in sorted(set(recorded) | set(current)):
        was, now = recorded.get(name), current.get(name)
        if isinstance(was, dict) and isinstance(now, dict) and name == "arms":
            lines += [f"--arms {arm}: {_text(was[arm])} when started, {_text(now[arm])} now"
                      for arm in sorted(set(was) & set(now)) if was[arm] != now[arm]]
        elif was != now:
            lines.append(f"--{name.replace('_', '-')}: {_text(was)} when started, {_text(now)} now")
    return lines


def _text(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return "not given" if value is None else str(value)
