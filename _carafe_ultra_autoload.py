"""Register CARAFE with Ultralytics in every interpreter of an environment that has carafe-ultra installed.

``carafe_ultra_autoload.pth`` imports this module at interpreter start-up. It imports neither torch nor
Ultralytics: it only puts a finder on ``sys.meta_path`` that waits for ``ultralytics.nn.tasks`` (where
Ultralytics resolves YAML module names) and calls :func:`carafe_ultra.register` right after that module has
run. That is what makes the plain ``yolo`` command, DDP workers and checkpoint loading in a fresh process
understand ``CARAFE`` without anyone importing carafe_ultra.

Switch it off with ``CARAFE_ULTRA_AUTOREGISTER=0`` (then call ``carafe_ultra.register()`` yourself).
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import warnings

TARGET = "ultralytics.nn.tasks"
SWITCH = "CARAFE_ULTRA_AUTOREGISTER"


class _RegisterAfterExec(importlib.abc.Loader):
    """Runs the real loader, then registers CARAFE; everything else is the real loader's."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str):  # get_source, get_filename, ...: inspect and linecache use them
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        try:
            from carafe_ultra.integration import register

            register()
        except Exception as error:  # a broken registration must not break Ultralytics for everyone else
            warnings.warn(f"carafe-ultra could not register CARAFE with Ultralytics: {error}", stacklevel=2)


class _UltralyticsTasksFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisterAfterExec(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the finder in place once, unless switched off by the environment."""
    if os.environ.get(SWITCH, "1").strip().lower() in {"0", "false", "no", "off"}:
        return
    if any(isinstance(finder, _UltralyticsTasksFinder) for finder in sys.meta_path):
        return
    if TARGET in sys.modules:  # imported before us: register now
        from carafe_ultra.integration import register

        register()
        return
    sys.meta_path.insert(0, _UltralyticsTasksFinder())


install()
