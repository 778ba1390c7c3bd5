"""Files that are either the old version or the new one, never half of either: each is written to a temporary file
beside it, flushed to the disk, and renamed over it (a rename within a folder is atomic on POSIX file systems). A
process killed at any moment, or a power cut, leaves the old file or the new one, and at worst a stray temporary
file beside it (``.NAME.PID.partial.SUFFIX``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_atomically(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new version to; when the block ends without an error it replaces
    ``path`` in one rename, otherwise it is removed and ``path`` is left as it was.

    The temporary name keeps ``path``'s suffix, so writers that choose the format by it (``savefig``) still do::

        with replaced_atomically(out / "summary.png") as temporary:
            figure.savefig(temporary)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield temporary
        with open(temporary, "rb+") as written:  # on the disk before the rename makes it the file (power cuts)
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    """``Path(path).write_text(text)``, atomically (see :func:`replaced_atomically`)."""
    with replaced_atomically(path) as temporary:
        temporary.write_text(text)
