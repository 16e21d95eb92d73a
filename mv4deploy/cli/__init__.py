"""The ``mv4deploy`` command line: parse, call one library function, hand the result to ``output``/``tables``.

One module per command, named after it (``inspect``, ``presets``, ``profile``, ``plan``, ``quantize``,
``verify``, ``validate``, ``generate``, ``run``, ``export``); ``app`` holds the Typer app and the shared
options. Exit codes: 0 ok, 1 a check failed, 2 bad input (one line on stderr naming file, field and value),
3 an internal error (a bug: rerun with ``--debug`` for the traceback). Heavy modules are imported inside the
commands that need them, so ``inspect``, ``profile`` and ``plan`` never import torch.
"""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.20 ships its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer depends on click itself
    from click import exceptions as click_errors

from mv4deploy.cli import output
# Each command module registers its command on ``app``; imported in the order ``--help`` lists them.
from mv4deploy.cli import inspect, presets, plan, quantize, verify, validate, generate  # noqa: F401,E402
from mv4deploy.cli import run as run_command, profile, export  # noqa: F401,E402
from mv4deploy.cli.app import app
from mv4deploy.core.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_OK, CheckFailed, InputError

EXIT_INTERNAL = 3
_EXIT = tuple({typer.Exit, getattr(click_errors, "Exit", typer.Exit)})
_ABORT = tuple({typer.Abort, getattr(click_errors, "Abort", typer.Abort)})


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(list(sys.argv[1:] if argv is None else argv)))


def run(args: list[str]) -> int:
    """Run one command line and return its exit code; user errors become one line on stderr."""
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="mv4deploy", standalone_mode=False)
    except InputError as exc:
        if debug:
            raise
        output.error(exc.one_line())
        return EXIT_BAD_INPUT
    except CheckFailed as exc:
        output.error(str(exc))
        return EXIT_CHECK_FAILED
    except click_errors.NoArgsIsHelpError as exc:
        output.text(exc.format_message())
        return EXIT_BAD_INPUT
    except click_errors.UsageError as exc:
        output.error(" ".join(exc.format_message().split()))
        return EXIT_BAD_INPUT
    except _EXIT as exc:
        return exc.exit_code
    except (*_ABORT, KeyboardInterrupt):
        output.error("interrupted")
        return 130
    except Exception as exc:  # a bug, not a user mistake
        if debug:
            raise
        output.error(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for a traceback")
        return EXIT_INTERNAL
    return code if isinstance(code, int) else EXIT_OK
