"""`mpcgpu keygen`: the long-term keys of the parties and the parties file."""

from __future__ import annotations

import os

SUMMARY = "make a party's long-term key pair, or the parties file of the three public keys"
DESCRIPTION = """\
Authenticated channels between the three servers need one Ed25519 key pair per
server and a parties file listing the three public keys. On each server i:

  mpcgpu keygen --out /etc/mpcgpu --party i
      writes /etc/mpcgpu/party<i>.key (private, mode 0600: never copy it off the
      server) and /etc/mpcgpu/party<i>.pub (public), and prints the public key.

Collect the three .pub files in one place and make the parties file:

  mpcgpu keygen --parties parties.json party0.pub party1.pub party2.pub [--hosts h0 h1 h2]

Copy parties.json to every server, then run every job with
  --key /etc/mpcgpu/party{party}.key --parties parties.json
(or MPCGPU_KEY / MPCGPU_PARTIES). `{party}` is replaced by the party's index.
For a test on one machine, `mpcgpu keygen --out DIR --all` makes all three keys
and DIR/parties.json at once.
"""


def add_arguments(p):
    p.add_argument("--out", default=None, metavar="DIR", help="directory for the key files")
    p.add_argument("--party", type=int, default=None, choices=(0, 1, 2), help="the party whose key to make")
    p.add_argument("--all", action="store_true", help="make the keys of all three parties and DIR/parties.json")
    p.add_argument("--parties", default=None, metavar="FILE", help="write the parties file from three .pub files")
    p.add_argument("pub", nargs="*", help="--parties: the three party<i>.pub files")
    p.add_argument("--hosts", nargs=3, default=None, metavar="HOST", help="--parties: host names of parties 0, 1, 2")
    p.add_argument("--force", action="store_true", help="replace existing files")


def run(args) -> int:
    from mpcgpu.comm.channels import write_key_pair, write_parties_file
    from ..errors import MPCError

    if args.parties:
        if args.out or args.party is not None or args.all:
            raise MPCError("--parties assembles the parties file; make keys with a separate --out call")
        write_parties_file(args.parties, args.pub, hosts=args.hosts, force=args.force)
        print(f"wrote {args.parties}: copy it to every party")
        return 0
    if not args.out or (args.party is None) == (not args.all) or args.pub:
        raise MPCError("use --out DIR --party N (one party), --out DIR --all (one machine), or --parties FILE PUB...")
    parties = range(3) if args.all else [args.party]
    pubs = []
    for i in parties:
        key_path, pub_path, pub = write_key_pair(args.out, i, force=args.force)
        pubs.append(pub_path)
        print(f"party {i}: private key {key_path} (keep it on party {i} only), public key {pub}")
    if args.all:
        path = os.path.join(args.out, "parties.json")
        write_parties_file(path, pubs, force=args.force)
        print(f"wrote {path}; run jobs with --key {os.path.join(args.out, 'party{party}.key')} --parties {path}")
    return 0
