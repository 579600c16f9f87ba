"""The ``mobile-vla`` entry point: discovers the sub-command modules in ``mobile_vla.commands``.

It is also the only place that changes process-wide state (``process_hooks``): while a command runs, SIGTERM
unwinds the stack like Ctrl-C (so a training is marked ``killed`` and its run directory and registry run are
closed), the MLflow environment defaults are set, and registry runs the command left open are closed on the
way out. Everything is restored when the command returns. Library code installs no hook and sets no
environment variable; a script that wants the same behaviour wraps its work in ``with process_hooks():``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from mobile_vla import __version__, commands

# MLflow's defaults for a command-line tool: no telemetry, no run URL printed on stdout (it would corrupt a
# command's --json output), no artifact progress bars. A value the user set is kept.
MLFLOW_ENVIRONMENT = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM inside ``process_hooks``.

    A ``KeyboardInterrupt``, so everything that handles Ctrl-C (the trainer marks its run ``killed``, a
    registry run handle closes as killed) handles a ``kill`` the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received signal {signum}")
        self.signum = signum


def _close_unfinished_registry_runs(exc: BaseException | None) -> None:
    """Mark the registry runs this process opened and did not finish (nothing when no registry was used)."""
    if "mobile_vla.registry.store" not in sys.modules:
        return
    from mobile_vla.registry.store import close_unfinished_runs

    if isinstance(exc, Terminated):
        close_unfinished_runs("killed", f"process ended by signal {exc.signum}")
    elif isinstance(exc, KeyboardInterrupt):
        close_unfinished_runs("killed", f"process ended by an uncaught {type(exc).__name__}: {exc}")
    elif exc is not None and not isinstance(exc, SystemExit):
        close_unfinished_runs("failed", f"process ended by an uncaught {type(exc).__name__}: {exc}")
    else:
        close_unfinished_runs("failed", "process exited without finishing the run")


@contextmanager
def process_hooks() -> Iterator[None]:
    """SIGTERM -> ``Terminated`` (then ``SystemExit(128 + signal)`` on the way out), the MLflow environment
    defaults, and unfinished registry runs closed; all restored or undone at the end."""
    saved_env = {name: os.environ.get(name) for name in MLFLOW_ENVIRONMENT}
    for name, value in MLFLOW_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    previous = None
    if threading.current_thread() is threading.main_thread():

        def on_sigterm(signum, frame):
            raise Terminated(signum)

        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        try:
            yield
        except BaseException as exc:
            _close_unfinished_registry_runs(exc)
            if isinstance(exc, Terminated):
                raise SystemExit(128 + exc.signum) from exc
            raise
        _close_unfinished_registry_runs(None)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    with process_hooks():
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except Terminated:
        raise  # process_hooks closes what is open and exits with 128 + the signal
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
