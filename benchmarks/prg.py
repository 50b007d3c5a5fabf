"""PRG throughput on one core: `python benchmarks/prg.py` (single process, no MPI).

Prints GB/s of AES-128-CTR keystream delivered as uint64 arrays, for several
sizes, and of an additive zero share (two streams and a subtraction).
"""

import time

from mpcgpu.crypto.prg import PartyPRG, Stream, fresh_key


def best(fn, repeat=5):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    s = Stream(fresh_key())
    p = PartyPRG(fresh_key(), fresh_key())
    print(f"{'words':>12} {'bytes':>10} {'stream GB/s':>12} {'zero-share GB/s':>16}")
    for words in (1 << 10, 1 << 14, 1 << 17, 1 << 20, 1 << 23):
        t = best(lambda: s.uint64((words,)))
        tz = best(lambda: p.zero_share((words,)))
        print(f"{words:>12} {8 * words:>10} {8 * words / t / 1e9:>12.2f} {8 * words / tz / 1e9:>16.2f}")


if __name__ == "__main__":
    main()
