"""Protocols on shares, as free functions: conversions (:mod:`.convert`), comparisons,
ReLU and max-pooling (:mod:`.compare`), average pooling (:mod:`.pooling`),
approximations (:mod:`.approx`) and exact rounding (:mod:`.rounding`).

Importing this package attaches them to the share type as methods
(:mod:`.methods`, the one place that does so).
"""

from . import methods  # noqa: F401  (attaches x.relu(), x < y, x.softmax(), ...)
