"""Randomness without communication: the parties' keyed PRG streams (:mod:`.prg`, AES-CTR)."""
