"""The ``chunkwise`` command line (typer).

Commands live in one module per group, ``chunkwise/cli/<group>_cmd.py``. Each such module defines
``register(app: typer.Typer) -> None`` which adds its command(s) (``app.command(...)``) or a
sub-typer (``app.add_typer(...)``). Every ``*_cmd.py`` module in this package is found and
registered automatically, in name order: to add a command group, add a module; nothing here changes.
Command modules should import heavy dependencies inside the command function, so that
``chunkwise --help`` stays fast.

Errors: a :class:`chunkwise.errors.ChunkwiseError` raised by a command is printed as
``error: <message>`` on stderr and the process exits with ``err.exit_code`` (2: bad input,
3: a failed check). Anything else is a bug: ``internal error: ...`` plus a hint, exit code 1. The
global ``--debug`` option shows the full traceback instead. This handling sits in the root command
group, so it applies equally to the installed script and to ``typer.testing.CliRunner``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
import warnings
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from ..errors import ChunkwiseError

_DEBUG_KEY = "chunkwise.debug"


def _is_control_flow(e: BaseException) -> bool:
    """typer/click's own exceptions (usage errors, --help exits, aborts) and a closed stdout pipe
    (``chunkwise inspect ... | head``) pass through untouched: typer handles them."""
    if isinstance(e, (typer.Exit, typer.Abort, BrokenPipeError)):
        return True
    return any(c.__name__ == "ClickException" for c in type(e).__mro__)


def _debug_requested(ctx) -> bool:
    return bool(ctx.meta.get(_DEBUG_KEY))


class _ErrorHandlingGroup(TyperGroup):
    """Root group: turns domain errors into ``error: ...`` and an exit code (see module docstring)."""

    def invoke(self, ctx) -> Any:
        try:
            with warnings.catch_warnings():
                from ..model import TargetGuessWarning

                warnings.showwarning = _show_warning
                warnings.simplefilter("default", TargetGuessWarning)  # once per run, even if filtered outside
                return super().invoke(ctx)
        except Exception as e:
            if _is_control_flow(e) or _debug_requested(ctx):
                raise
            if isinstance(e, ChunkwiseError):
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(e.exit_code) from None
            typer.echo(f"internal error: {type(e).__name__}: {e}", err=True)
            typer.echo("This is a bug in chunkwise. Rerun with --debug (chunkwise --debug ...) for the "
                       "traceback, and please report it.", err=True)
            raise typer.Exit(1) from None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    typer.echo(f"warning: {message}", err=True)


app = typer.Typer(
    cls=_ErrorHandlingGroup,
    name="chunkwise",
    help="Quantize, stream, serialize and bit-exactly emulate ESP-DL models on the host.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"chunkwise {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version_callback, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Quantize, stream, serialize and bit-exactly emulate ESP-DL models on the host."""
    ctx.meta[_DEBUG_KEY] = debug


def _register_all() -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.endswith("_cmd"):
            module = importlib.import_module(f"{__name__}.{mod.name}")
            register = getattr(module, "register", None)
            if register is None:
                raise RuntimeError(f"{module.__name__} has no register(app) function")
            register(app)


_register_all()


def main() -> None:
    """Entry point of the ``chunkwise`` script."""
    try:
        app()
    except SystemExit:
        raise
    except ChunkwiseError as e:  # only reached if raised outside a command (e.g. while registering)
        if "--debug" in sys.argv[1:]:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:
        if "--debug" in sys.argv[1:]:
            traceback.print_exc()
            sys.exit(1)
        print(f"internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print("This is a bug in chunkwise. Rerun with --debug for the traceback, and please report it.",
              file=sys.stderr)
        sys.exit(1)


__all__ = ["app", "main"]
