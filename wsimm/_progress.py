"""Rich progress bars that respect ``quiet``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any


class _NullProgress:
    """Stands in for :class:`rich.progress.Progress` when quiet."""

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass

    def remove_task(self, *args: Any, **kwargs: Any) -> None:
        pass

    @property
    def console(self) -> Any:
        from rich.console import Console

        return Console(quiet=True)


@contextlib.contextmanager
def progress(*, quiet: bool = False, transient: bool = False) -> Iterator[Any]:
    """A rich ``Progress`` with bar, counts, rate and ETA; a silent stand-in when ``quiet``.

    Output goes to stderr so that ``--json`` output on stdout stays machine-readable.
    """
    if quiet:
        yield _NullProgress()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)
    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    ) as p:
        yield p
