"""The ``wsimm`` typer app: thin argument parsing, one library call per command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from wsimm._version import __version__
from wsimm_cli._common import STATE, handle_errors, stdout_console

app = typer.Typer(
    name="wsimm",
    help="Whole-slide pathology and multi-omics multiple-instance learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsimm {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")
    ] = False,
) -> None:
    """wsimm: tile slides into a Zarr feature store, train attention MIL and graph fusion."""
    STATE["debug"] = debug


Backend = Annotated[
    str,
    typer.Option("--backend", help="Slide reader: auto (probe), openslide or tiffslide."),
]


@app.command()
@handle_errors
def info(
    slides: Annotated[
        list[Path], typer.Argument(help="Slide files or folders (a DICOM folder is one slide).")
    ],
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
    backend: Backend = "auto",
    slide_mpp: Annotated[
        float | None, typer.Option("--slide-mpp", help="Override the level-0 µm/px.")
    ] = None,
) -> None:
    """Show dimensions, levels, MPP and its source, vendor and backend of slides."""
    from wsimm.slide import inspect_slides

    results = inspect_slides([str(s) for s in slides], backend=backend, mpp=slide_mpp)
    if json_out:
        rows = [r.info.to_dict() if r.info else {"path": r.path, "error": r.error} for r in results]
        typer.echo(json.dumps(rows, indent=1))
    else:
        _print_info_table(results)
    failed = [r for r in results if not r.ok]
    if failed:
        for r in failed:
            typer.echo(f"error: {r.error}", err=True)
        raise typer.Exit(1)


def _print_info_table(results: list) -> None:
    from rich.table import Table

    table = Table(title="slides")
    table.add_column("slide", overflow="fold", min_width=16)
    for col in ("backend", "vendor", "size (px)", "levels", "µm/px", "MPP from"):
        table.add_column(col, no_wrap=True)
    notes = []
    for r in results:
        name = Path(r.path).name
        if r.info is None:
            table.add_row(name, "-", "-", "-", "-", "-", "[red]unreadable[/red]")
            continue
        i = r.info
        mpp = f"{i.mpp_x:.4g}" if i.mpp_x is not None else "[yellow]?[/yellow]"
        if i.mpp_x is not None and i.mpp_y is not None and abs(i.mpp_x - i.mpp_y) > 1e-3 * i.mpp_x:
            mpp = f"{i.mpp_x:.4g}x{i.mpp_y:.4g}"
        if i.mpp_note:
            notes.append(f"{name}: {i.mpp_note}")
        src = i.mpp_source or "[yellow]none[/yellow]"
        table.add_row(
            name, i.backend, i.vendor or "-", f"{i.width}x{i.height}", str(i.level_count), mpp, src
        )
    console = stdout_console()
    console.print(table)
    for n in notes:
        console.print(f"note: {n}", soft_wrap=True)
    if any(r.info is not None and r.info.mpp_x is None for r in results):
        console.print("note: slides without µm/px need --slide-mpp when tiled", soft_wrap=True)


@app.command()
@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for everything the demo makes.")] = (
        Path("wsimm-demo")
    ),
    patients: Annotated[int, typer.Option("--patients", min=4, help="Synthetic patients.")] = 12,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Run the whole pipeline on a synthetic cohort wsimm generates itself."""
    from wsimm.demo import run_demo

    res = run_demo(out, n_patients=patients, seed=seed, quiet=quiet)
    if not quiet:
        from rich.table import Table

        table = Table(title=f"wsimm demo -> {res.out}")
        table.add_column("step")
        table.add_column("result")
        table.add_column("seconds", justify="right")
        for s in res.steps:
            detail = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("step", "seconds"))
            table.add_row(s["step"], detail, f"{s['seconds']:.2f}")
        stdout_console().print(table)
    failed = [p for s in res.steps for p in s.get("failed", [])]
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
