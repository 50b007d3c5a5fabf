"""The operators of graph models (:mod:`mpcgpu.nn.dag`), one module per family, each
registering its operators with :func:`mpcgpu.nn.dag.register_op`.

The package imports every module in it whose name does not start with ``_`` (sorted by
name), so adding an operator family is adding one file."""

from __future__ import annotations

from ...util.plugins import import_all

_MODULES = import_all(__name__, __path__)
