"""Packages whose modules register themselves (the layer types, the graph operators)."""

from __future__ import annotations

import importlib
import pkgutil


def import_all(package: str, path) -> list:
    """Import every module of ``package`` (its ``__path__`` is ``path``) whose name does not
    start with ``_``, sorted by name, so that adding a module is adding one file."""
    mods = []
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"{package}.{info.name}"))
    return mods
