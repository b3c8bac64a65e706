"""Shared CLI plumbing: one-line errors, the debug switch, consoles."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

STATE = {"debug": False}


def fail(message: str, *, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn wsimm errors into one-line messages with a non-zero exit (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from wsimm.errors import WsimmError

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except WsimmError as e:
            if STATE["debug"]:
                raise
            raise fail(str(e)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", code=130) from None
        except Exception as e:
            if STATE["debug"]:
                raise
            name = type(e).__name__
            raise fail(
                f"unexpected {name}: {e} (a wsimm bug: rerun with --debug for the traceback "
                "and report it)",
                code=2,
            ) from None

    return wrapper  # type: ignore[return-value]


def stdout_console() -> Any:
    from rich.console import Console

    # a wide fixed width when piped, so tables stay readable in logs
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 140)


def one_line_warnings() -> None:
    """Show Python warnings (wsimm's notes on skipped rows, ...) as ``warning: message``
    lines instead of file:line source excerpts."""
    import warnings

    warnings.formatwarning = lambda m, *a, **k: f"warning: {m}\n"
    # torch_geometric (2.8) scripts a module at import time and torch 2.10+ deprecates
    # torch.jit.script: a note to PyG's authors that a wsimm user cannot act on
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
    )
