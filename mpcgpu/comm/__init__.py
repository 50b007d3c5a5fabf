"""Communication between the three parties: the :class:`~.communicator.Communicator` the
protocols use (a facade), over a transport (:mod:`.transport`: the one module that talks to
mpi4py; waits, peer timeout, aborts), a sealed link (:mod:`.link`, with the channels'
handshake and AEAD in :mod:`.channels`, and the data-only object channel in :mod:`.plaindata`)
and a meter (:mod:`.meter`: bytes and rounds)."""
