"""The operators of graph models (:mod:`mpcgpu.nn.dag`), one module per family, each
registering its operators with :func:`mpcgpu.nn.dag.register_op`.

The package imports every module in it whose name does not start with ``_`` (sorted by
name), so adding an operator family is adding one file."""

from __future__ import annotations

import importlib
import pkgutil


def _discover() -> list:
    mods = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"{__name__}.{info.name}"))
    return mods


_MODULES = _discover()
