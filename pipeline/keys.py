"""Make and manage CurveZMQ keys for the published pose stream.

    python -m pipeline.keys new server --dir keys/server      # the publisher's key pair
    python -m pipeline.keys new alice --dir keys/alice        # one per subscriber
    python -m pipeline.keys authorize keys/alice/alice.key --dir keys/authorized
    python -m pipeline.keys show keys/server/server.key       # print a public key

`new` writes NAME.key (public: hand it out) and NAME.key_secret (secret, mode 0600: keep
it where it is). The publisher needs its own .key_secret and the folder of authorised
subscriber .key files; a subscriber needs its own .key_secret and the server's .key.
Exit status 0 on success, 2 with a message on stderr otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.security import KeyFileError, authorize, generate_keypair, load_public_key


def build_parser(prog: str = "python -m pipeline.keys") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="CurveZMQ keys for posestream's published stream (see docs/RELIABILITY.md).",
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="write NAME.key and NAME.key_secret")
    new.add_argument("name", help="a plain name: server, alice, robot-arm, ...")
    new.add_argument("--dir", default=".", help="folder to write into (default: here)")
    auth = sub.add_parser("authorize",
                          help="let a subscriber connect: copy its public .key into a folder")
    auth.add_argument("public_key", help="the subscriber's NAME.key file")
    auth.add_argument("--dir", required=True, help="the publisher's authorised-keys folder")
    show = sub.add_parser("show", help="print the public key of a .key or .key_secret file")
    show.add_argument("key_file")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m pipeline.keys") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        if args.command == "new":
            public, secret = generate_keypair(args.dir, args.name)
            print(f"public key (give to the other side): {public}")
            print(f"secret key (keep here, mode 600):     {secret}")
        elif args.command == "authorize":
            dst = authorize(args.public_key, args.dir)
            print(f"authorised: {dst}")
        else:
            print(load_public_key(args.key_file).decode("ascii"))
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
