"""`python -m simulator [--host 127.0.0.1] [--port 9001] [--prefix PREFIX]`.

The prefix defaults to the environment's CBC_PROXY_FUNCTION_PREFIX (as the dispatcher reads
it), so one variable points both at the same function names.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Mapping, Sequence


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulator", description="Serve the CBC proxy Lambda simulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001, help="0 picks a free port")
    parser.add_argument(
        "--prefix",
        default=environ.get("CBC_PROXY_FUNCTION_PREFIX", ""),
        help="prepended to every function name (default: $CBC_PROXY_FUNCTION_PREFIX or none)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    from simulator.app import CannotListen, run

    args = parse_args(argv)
    try:
        run(args.host, args.port, args.prefix)
    except CannotListen as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
