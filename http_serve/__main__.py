"""`python -m http_serve --model DIR [--port 8080] [--workers N] [...]`: the online scoring service, as
`tfbridge serve` runs it (see http_serve.server), with the same exit codes."""

import argparse
import sys

from http_serve.server import add_serve_arguments, serve
from tfbridge.jobs import run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m http_serve", description=__doc__.split("\n\n")[0])
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    return run_job(lambda: serve(args))


if __name__ == "__main__":
    sys.exit(main())
