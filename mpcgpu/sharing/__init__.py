"""Replicated secret sharing: the shared base (:mod:`.replicated`), arithmetic shares over
Z_2^64 (:mod:`.arithmetic`), their truncation (:mod:`.truncation`) and binary XOR
shares (:mod:`.binary`).  Nothing here knows a protocol beyond products and
truncation; the non-linear functions live in :mod:`mpcgpu.protocols`."""
