"""Run the `mpcgpu` command line on this rank, recording the words it receives (a test
helper for tests/test_train_cli.py, run as ``python tests/record_words.py DIR ARGS...``).

``DIR/rank<r>.words``: the raw words of every uint64 array this rank receives through
``Communicator.exchange``, in order, appended unbuffered (they survive a SIGKILL).
``DIR/rank<r>.marks``: one line ``EVENT STEP WORDS`` each time a checkpoint of ``STEP`` is
saved (``save``) or loaded (``load``): the number of words recorded by then, so that the
words of the steps after a checkpoint can be lined up between a crashed and a resumed run.
"""

import os
import sys

import numpy as np

import mpcgpu.comm.communicator as comm_module
import mpcgpu.comm.transport as transport
from mpcgpu.nn import checkpoint


def main():
    out, argv = sys.argv[1], sys.argv[2:]
    os.makedirs(out, exist_ok=True)
    rank = transport.world_rank()
    words = open(os.path.join(out, f"rank{rank}.words"), "ab", buffering=0)
    marks = open(os.path.join(out, f"rank{rank}.marks"), "a", buffering=1)
    count = [0]
    exchange = comm_module.Communicator.exchange

    def recording(self, sends=None, recvs=None):
        got = exchange(self, sends, recvs)
        for peer in sorted(got):
            a = np.ascontiguousarray(self.backend.to_host(got[peer]))
            if a.dtype == np.uint64:
                words.write(a.tobytes())
                count[0] += a.size
        return got

    def marking(event, original):
        def wrapped(directory, party, step, *args, **kwargs):
            result = original(directory, party, step, *args, **kwargs)
            marks.write(f"{event} {int(step)} {count[0]}\n")
            return result

        return wrapped

    comm_module.Communicator.exchange = recording
    checkpoint.save = marking("save", checkpoint.save)
    checkpoint.load = marking("load", checkpoint.load)
    from mpcgpu.cli import main as cli_main

    sys.exit(cli_main(argv))


if __name__ == "__main__":
    main()
