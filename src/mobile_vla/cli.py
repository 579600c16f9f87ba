"""The ``mobile-vla`` entry point: discovers the sub-command modules in ``mobile_vla.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from mobile_vla import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobile-vla",
        description="Build, train, evaluate, compare and serve vision-language-action policies for mobile robots.",
    )
    parser.add_argument("--version", action="version", version=f"mobile-vla {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, RuntimeError) as exc:
        # User errors (a missing file, a bad value, a refused checkpoint) say what and where; --verbose shows
        # the traceback for bug reports.
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
