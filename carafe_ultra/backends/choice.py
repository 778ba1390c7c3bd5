"""The user's choice of backend: ``CARAFE_ULTRA_BACKEND`` = auto (the default), torch or cupy.

Read where it matters: by the dispatch (``backends/__init__.py``) and by the CUDA path, where ``cupy`` turns a
failing specialisation into an error instead of a fallback.
"""

from __future__ import annotations

import os

BACKEND_VARIABLE = "CARAFE_ULTRA_BACKEND"
CHOICES = ("auto", "torch", "cupy")


def backend_choice() -> str:
    """``CARAFE_ULTRA_BACKEND``, checked: auto (the default), torch or cupy."""
    choice = os.environ.get(BACKEND_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{BACKEND_VARIABLE} must be one of {', '.join(CHOICES)}, got {choice!r}")
    return choice
