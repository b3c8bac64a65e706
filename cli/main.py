"""The ``wsimm`` typer app: thin argument parsing, one library call per command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from wsimm._version import __version__
from wsimm_cli._common import STATE, handle_errors, one_line_warnings, stdout_console

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
    if not debug:  # readers' own log lines about damaged files: wsimm's error names the file
        import logging

        for name in ("tifffile", "tiffslide"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


Backend = Annotated[
    str,
    typer.Option("--backend", help="Slide reader: auto (probe), openslide or tiffslide."),
]

# options shared by the commands that run encoders over a cohort (tile, embed)
Weights = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="Weights file, hf-hub:ORG/NAME, or random.",
        show_default="the encoder's published weights (hub or local cache)",
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1)]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        help="Local worker threads.",
        show_default="one per core; one with a model encoder on the CPU",
    ),
]
Scheduler = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Existing Dask scheduler tcp://HOST:PORT.",
        show_default="a local cluster in this process",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


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
def tile(
    slides: Annotated[list[Path], typer.Argument(help="Slide files or folders of slides.")],
    store: Annotated[Path, typer.Option("--store", help="Cohort feature store (.zarr).")],
    mpp: Annotated[float, typer.Option("--mpp", help="Target µm/px (exact).")] = 0.5,
    tile_px: Annotated[int, typer.Option("--tile-px", help="Tile side in pixels.")] = 256,
    overlap: Annotated[float, typer.Option("--overlap", help="Tile overlap, 0-1.")] = 0.0,
    min_tissue: Annotated[
        float, typer.Option("--min-tissue", help="Minimum tissue fraction per tile.")
    ] = 0.25,
    edge_tiles: Annotated[
        bool,
        typer.Option(
            "--edge-tiles",
            help="Also tile past the slide's right and bottom edges (white padding, as CLAM "
            "does), so tissue at the border is tiled.",
        ),
    ] = False,
    encoder: Annotated[
        str,
        typer.Option(
            "--encoder",
            help="Encoder (wsimm encoders lists them), or 'none' for coordinates only. The "
            "default is CLAM's ImageNet ResNet50 cut after layer 3: its weights come from the "
            "Hugging Face hub, or pass --weights PATH offline. test_tiny and mean_rgb are for "
            "tests only.",
        ),
    ] = "resnet50_trunc",
    weights: Weights = None,
    batch_size: BatchSize = 64,
    device: Device = "auto",
    workers: Workers = None,
    scheduler: Scheduler = None,
    slide_mpp: Annotated[
        float | None,
        typer.Option("--slide-mpp", help="Level-0 µm/px for slides that do not record it."),
    ] = None,
    tissue: Annotated[
        str, typer.Option("--tissue", help="Tissue preset: default, biopsy, resection.")
    ] = "default",
    qc_dir: Annotated[
        Path | None, typer.Option("--qc-dir", help="Write a QC PNG per slide here.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace slides tiled with other parameters.")
    ] = False,
    stain_norm: Annotated[
        str,
        typer.Option("--stain-norm", help="none, or macenko (fitted per slide) before encoding."),
    ] = "none",
    quiet: Quiet = False,
) -> None:
    """Tissue -> tiles -> embeddings into the Zarr feature store."""
    from wsimm.pipeline import tile_slides
    from wsimm.tiling import TileSpec

    report = tile_slides(
        [str(s) for s in slides],
        store,
        spec=TileSpec(
            mpp=mpp, tile_px=tile_px, overlap=overlap, min_tissue=min_tissue, edge_tiles=edge_tiles
        ),
        tissue=tissue,
        encoder=encoder,
        weights=weights,
        batch_size=batch_size,
        device=device,
        workers=workers,
        scheduler=scheduler,
        slide_mpp=slide_mpp,
        qc_dir=qc_dir,
        overwrite=overwrite,
        stain_norm=stain_norm,
        quiet=quiet,
    )
    _summary("wsimm tile", report, quiet)


def _summary(title: str, report, quiet: bool) -> None:
    """Per-slide table + totals (one line of totals when quiet); failures on stderr; exit 1
    if any failed."""
    n = {k: sum(r.status == k for r in report.results) for k in ("done", "skipped", "failed")}
    if quiet:
        typer.echo(
            f"{title}: {n['done']} done, {n['skipped']} skipped, {n['failed']} failed -> "
            f"{report.store}"
        )
    else:
        from rich.table import Table

        table = Table(title=f"{title} -> {report.store}")
        for col in ("slide", "status", "tiles", "seconds"):
            table.add_column(col, justify="right" if col in ("tiles", "seconds") else "left")
        for r in report.results:
            colour = {"done": "green", "skipped": "cyan", "failed": "red"}[r.status]
            table.add_row(
                r.slide_id, f"[{colour}]{r.status}[/{colour}]", str(r.tiles), f"{r.seconds:.1f}"
            )
        stdout_console().print(table)
        stdout_console().print(
            f"{n['done']} done, {n['skipped']} skipped, {n['failed']} failed; "
            f"{report.tiles} tiles in {report.seconds:.1f} s"
        )
    for r in report.failed:
        typer.echo(f"error: {r.error}", err=True)
    if report.failed:
        raise typer.Exit(1)


@app.command()
@handle_errors
def embed(
    store: Annotated[Path, typer.Argument(help="Cohort feature store (.zarr).")],
    encoder: Annotated[str, typer.Option("--encoder", help="Encoder name (wsimm encoders).")],
    weights: Weights = None,
    batch_size: BatchSize = 64,
    device: Device = "auto",
    workers: Workers = None,
    scheduler: Scheduler = None,
    slide: Annotated[
        list[str] | None, typer.Option("--slide", help="Only these slide ids (repeatable).")
    ] = None,
    slides_dir: Annotated[
        Path | None, typer.Option("--slides-dir", help="Where the slide files are now.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace features from other weights.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Add another encoder's features to a store, without re-tiling."""
    from wsimm.pipeline import embed_store

    report = embed_store(
        store,
        encoder,
        weights=weights,
        batch_size=batch_size,
        device=device,
        workers=workers,
        scheduler=scheduler,
        slides=slide,
        slides_dir=slides_dir,
        overwrite=overwrite,
        quiet=quiet,
    )
    _summary("wsimm embed", report, quiet)


@app.command()
@handle_errors
def encoders() -> None:
    """List the registered encoders (any timm model also works as timm:<name>)."""
    from rich.table import Table

    from wsimm.encoders import SPECS, list_encoders

    table = Table(title="wsimm encoders")
    for col in ("name", "dim", "µm/px", "weights"):
        table.add_column(col)
    for name in list_encoders():
        spec = SPECS.get(name)
        if spec is None:
            table.add_row(name, "", "", "built in (numpy)")
        else:
            w = f"gated: huggingface.co/{spec.hub}" if spec.gated else f"hf-hub:{spec.hub}"
            table.add_row(name, str(spec.embed_dim), str(spec.mpp or "any"), w)
    table.add_row("timm:<name>", "", "", "any timm model; --weights PATH or hf-hub")
    stdout_console().print(table)


@app.command("export-h5")
@handle_errors
def export_h5_cmd(
    store: Annotated[Path, typer.Argument(help="Cohort feature store (.zarr).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for <slide_id>.h5 files.")],
    encoder: Annotated[str | None, typer.Option("--encoder", help="Which features.")] = None,
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            help="wsimm (flat <slide>.h5), clam (patches/, h5_files/, pt_files/), trident "
            "(<mag>x_<px>px_<overlap>px_overlap/ tree) or stamp (feats + coords in µm).",
        ),
    ] = "wsimm",
    quiet: Quiet = False,
) -> None:
    """Write each slide's coords and features as h5 files CLAM, TRIDENT or STAMP read."""
    from wsimm.store import export_h5

    files = export_h5(store, out, encoder=encoder, layout=layout, quiet=quiet)
    typer.echo(f"wrote {len(files)} files ({layout} layout) to {out}")


@app.command("import-h5")
@handle_errors
def import_h5_cmd(
    directory: Annotated[
        Path, typer.Argument(help="Folder of CLAM/TRIDENT h5 files, or one such file.")
    ],
    store: Annotated[Path, typer.Option("--store", help="Cohort feature store (.zarr).")],
    encoder: Annotated[str, typer.Option("--encoder", help="Name to file the features under.")],
    slides_dir: Annotated[
        Path | None,
        typer.Option(
            "--slides-dir",
            help="Folder of the slide files (matched by name): attached for heatmaps and "
            "views, and their µm/px and size fill what the h5 lacks (STAMP files need it).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace slides.")] = False,
    quiet: Quiet = False,
) -> None:
    """Bring CLAM, TRIDENT or STAMP h5 features into a store."""
    from wsimm.store import import_h5

    ids = import_h5(
        directory, store, encoder=encoder, overwrite=overwrite, slides_dir=slides_dir, quiet=quiet
    )
    typer.echo(f"imported {len(ids)} slides into {store}")


@app.command()
@handle_errors
def train(
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            help="Feature store (.zarr). Required with slides (not for an "
            "omics/clinical-only --fusion run), here or in --config.",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="CSV/TSV/parquet: patient, slide, outcomes. Required, here or in --config.",
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option("--task", help="grade or survival. Required, here or in --config."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Run directory to write. Required, here or in --config.",
        ),
    ] = None,
    label_col: Annotated[
        str | None,
        typer.Option(
            "--label-col",
            help="Labels column with the grade (class) to predict.",
            show_default="grade",
        ),
    ] = None,
    grade_order: Annotated[
        str | None,
        typer.Option(
            "--grade-order",
            help="Grade classes lowest first, comma-separated (text labels: low,mid,high).",
        ),
    ] = None,
    time_col: Annotated[
        str | None,
        typer.Option("--time-col", help="Survival time column.", show_default="time"),
    ] = None,
    event_col: Annotated[
        str | None,
        typer.Option("--event-col", help="1 = event observed, 0 = censored.", show_default="event"),
    ] = None,
    censorship_col: Annotated[
        str | None,
        typer.Option("--censorship-col", help="Use instead of --event-col when 1 = censored."),
    ] = None,
    patient_col: Annotated[
        str | None,
        typer.Option(
            "--patient-col",
            help="Patient id column (folds split patients).",
            show_default="patient_id",
        ),
    ] = None,
    slide_col: Annotated[
        str | None,
        typer.Option(
            "--slide-col",
            help="Slide id column: slide file names without extension.",
            show_default="slide_id",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="mean, max, abmil, abmil_gated, clam_sb, clam_mb, transmil.",
            show_default="abmil",
        ),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder",
            help="Which features, when the store has several.",
            show_default="the one every slide has",
        ),
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(
            "--folds", min=2, help="Patient-level cross-validation folds.", show_default="5"
        ),
    ] = None,
    splits: Annotated[
        Path | None, typer.Option("--splits", help="splits.csv, a run dir, or CLAM splits_k.csv.")
    ] = None,
    survival_loss: Annotated[
        str | None,
        typer.Option("--survival-loss", help="nll (discrete time) or cox.", show_default="nll"),
    ] = None,
    multi_slide: Annotated[
        str | None,
        typer.Option(
            "--multi-slide", help="tiles (pool a patient's tiles) or slides.", show_default="tiles"
        ),
    ] = None,
    max_tiles: Annotated[
        int | None,
        typer.Option(
            "--max-tiles",
            help="Tiles sampled per bag in training (all at test time).",
            show_default="8192",
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Bags per step.", show_default="8")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="AdamW learning rate.", show_default="0.001")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            min=1,
            help="Most epochs; the epoch is chosen on validation patients (early stopping).",
            show_default="40",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Folds, sampling and init.", show_default="0")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu or cuda.", show_default="auto")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="torch CPU threads.",
            show_default="1 without slides (small networks), torch's default with slides",
        ),
    ] = None,
    omics: Annotated[
        Path | None,
        typer.Option("--omics", help="Omics: .h5ad (obs = patients) or a table of <gene>_<assay>."),
    ] = None,
    gene_groups: Annotated[
        Path | None,
        typer.Option("--gene-groups", help="Gene groups: GMT, group/gene table or a column each."),
    ] = None,
    clinical: Annotated[
        Path | None, typer.Option("--clinical", help="Clinical table (rows: patients or slides).")
    ] = None,
    clinical_cols: Annotated[
        str | None,
        typer.Option(
            "--clinical-cols",
            help="Comma-separated clinical columns to use.",
            show_default="every usable column",
        ),
    ] = None,
    fusion: Annotated[
        str | None,
        typer.Option(
            "--fusion",
            help="none (slides only), graph, late, concat or kronecker.",
            show_default="none",
        ),
    ] = None,
    baselines: Annotated[
        str | None,
        typer.Option(
            "--baselines",
            help="Baselines on the same folds: auto, none or names.",
            show_default="auto",
        ),
    ] = None,
    tune: Annotated[
        bool | None,
        typer.Option(
            "--tune/--no-tune",
            help="Choose lr and weight decay (or a tune: grid in --config) per fold by inner "
            "cross-validation on its training patients.",
            show_default="no-tune",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML with any of these options (flags given here win)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a finished run.")] = False,
    quiet: Quiet = False,
) -> None:
    """Cross-validate an attention-MIL model, or a fusion of slides, omics and clinical data,
    for grading or survival (patient-level folds, baselines on the same folds)."""
    # the flags the user gave (None = not given, so --config or the defaults decide)
    given = {k: v for k, v in locals().items() if k not in ("config", "overwrite", "quiet")}
    given = {k: str(v) if isinstance(v, Path) else v for k, v in given.items() if v is not None}
    from wsimm.train import TrainConfig
    from wsimm.train import train as run_train
    from wsimm.train._dist import is_main_process

    cfg = TrainConfig.load(config, **given) if config else TrainConfig(**given)
    _require_train_options(cfg, given, config)
    one_line_warnings()
    quiet = quiet or not is_main_process()  # under torchrun, rank 0 reports
    res = run_train(cfg, overwrite=overwrite, quiet=quiet)
    if not quiet:
        _print_run(res)
    elif is_main_process():
        typer.echo(f"wsimm train: {res.out} (metrics.json, predictions.csv)")
    for k, err in res.failed.items():
        typer.echo(f"error: fold {k} failed: {err}", err=True)
    if res.failed:
        raise typer.Exit(1)


def _require_train_options(cfg, given: dict, config: Path | None) -> None:
    """--labels, --task and --out have no default a user would mean: each must come from a
    flag or from --config (the library's TrainConfig keeps its defaults for scripts)."""
    import yaml

    from wsimm.errors import ConfigError

    raw = (yaml.safe_load(Path(config).read_text()) or {}) if config else {}
    from_file = {str(k).replace("-", "_") for k in raw}
    for name, hint in (("labels", "TABLE"), ("task", "grade|survival"), ("out", "RUN_DIR")):
        if name not in given and name not in from_file:
            raise ConfigError(f"--{name} {hint} is required (as a flag or in --config)")


def _print_run(res) -> None:
    from rich.table import Table

    from wsimm.train._metrics import METRIC_KEYS

    m = res.metrics
    keys = METRIC_KEYS[m["task"]]
    table = Table(title=f"wsimm train {m['model']} ({m['task']}) -> {res.out}")
    for col in ("fold", *keys, "best epoch", "test patients"):
        table.add_column(col, justify="right")

    def fmt(v) -> str:
        return "-" if v is None else f"{v:.3f}"

    for r in m["folds"]:
        table.add_row(
            str(r["fold"]), *(fmt(r.get(k)) for k in keys), str(r["best_epoch"]), str(r["n_test"])
        )
    table.add_row(
        "mean ± sd",
        *(f"{fmt(m['mean'][k])} ± {fmt(m['std'][k])}" for k in keys),
        "",
        str(sum(r["n_test"] for r in m["folds"])),
    )
    console = stdout_console()
    console.print(table)
    if m.get("clinical"):
        used = ", ".join(f"{c} ({t})" for c, t in m["clinical"]["columns"].items())
        console.print(f"clinical columns used: {used}", soft_wrap=True)
        if m["clinical"]["excluded"]:
            left = ", ".join(f"{c} ({why})" for c, why in m["clinical"]["excluded"].items())
            console.print(
                f"clinical columns left out: {left}; name them with --clinical-cols to use them",
                soft_wrap=True,
            )
    if "interval_coverage" in m["mean"]:  # fusion_kwargs uncertainty
        key = keys[0]
        level = m["folds"][0].get("interval_level", 0.8)
        console.print(
            f"uncertainty weighting: {key} {fmt(m['mean'][key])} (the same passes unweighted "
            f"{fmt(m['mean'].get(f'{key}_unweighted'))}); {level:.0%} intervals held "
            f"{fmt(m['mean']['interval_coverage'])} of the test patients",
            soft_wrap=True,
        )
    if m.get("baselines"):
        key = keys[0]
        cmp = Table(title=f"{key} on the same folds (mean ± sd)")
        cmp.add_column("model")
        cmp.add_column(key, justify="right")
        cmp.add_row(m["model"], f"{fmt(m['mean'][key])} ± {fmt(m['std'][key])}")
        for name, b in m["baselines"].items():
            cmp.add_row(name, f"{fmt(b['mean'].get(key))} ± {fmt(b['std'].get(key))}")
        console.print(cmp)
    console.print(f"{res.seconds:.1f} s; predictions.csv, metrics.json, fold_*/ in {res.out}")


@app.command()
@handle_errors
def predict(
    run: Annotated[Path, typer.Option("--run", help="Run directory from wsimm train.")],
    store: Annotated[Path, typer.Option("--store", help="Feature store (.zarr).")],
    out: Annotated[Path, typer.Option("--out", help="predictions.csv to write.")],
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="Patients and slides (outcomes optional, for metrics)."),
    ] = None,
    device: Device = "auto",
    in_sample_metrics: Annotated[
        bool,
        typer.Option(
            "--in-sample-metrics",
            help="Also score the run's own patients (trained on: optimistic, marked in_sample_).",
        ),
    ] = False,
) -> None:
    """Apply every fold model of a run to the slides of a store (averaged over folds).

    Patients of the run's own cohort are marked in_sample and left out of the metrics."""
    from wsimm.train import predict as run_predict

    one_line_warnings()
    res, metrics = run_predict(
        run, store, labels=labels, out=out, device=device, in_sample_metrics=in_sample_metrics
    )
    n_in = int(res["in_sample"].sum())
    typer.echo(f"wrote {len(res)} predictions to {out}")
    if n_in:
        typer.echo(
            f"{n_in} of {len(res)} patients are the run's own (trained on by its folds): "
            "marked in_sample and left out of the metrics"
            + ("" if in_sample_metrics else " (--in-sample-metrics scores them apart)")
        )
    if metrics:
        typer.echo(
            ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
            )
        )


@app.command()
@handle_errors
def heatmap(
    run: Annotated[Path, typer.Option("--run", help="Run directory from wsimm train.")],
    store: Annotated[Path, typer.Option("--store", help="Feature store (.zarr).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the heatmap files.")],
    slide: Annotated[
        list[str] | None,
        typer.Option("--slide", help="Slide id (repeat); default every slide of the store."),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option("--format", help="Comma-separated: png,tiff,geojson,gallery (or all)."),
    ] = "all",
    fold: Annotated[
        str,
        typer.Option(
            "--fold",
            help="auto (the fold that held the slide out, else all folds), all, or a fold.",
        ),
    ] = "auto",
    score: Annotated[
        str | None,
        typer.Option(
            "--score",
            help="attention, attention_<class>, contribution, coattention_<group>_<assay> "
            "(fusion with coattention: where a gene group looks) (default: attention of the "
            "predicted class; risk contribution for survival).",
        ),
    ] = None,
    scale: Annotated[
        str, typer.Option("--scale", help="auto, percentile, signed or raw.")
    ] = "auto",
    overlap: Annotated[
        float,
        typer.Option(
            "--overlap",
            help="Re-tile with this overlap (0-1) and score the denser tiles (needs the slide "
            "file and the encoder).",
        ),
    ] = 0.0,
    smooth: Annotated[
        float, typer.Option("--smooth", help="Gaussian smoothing over the tile grid, in tiles.")
    ] = 0.0,
    cmap: Annotated[
        str | None,
        typer.Option(
            "--cmap",
            help="Matplotlib colour map (default: viridis; signed risk contributions: RdBu_r).",
        ),
    ] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="PNG overlay opacity, 0-1.")] = 0.5,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Tiles in the gallery.")] = 8,
    tiff_downsample: Annotated[
        float | None,
        typer.Option(
            "--tiff-downsample",
            help="Level-0 px per TIFF px (default 1: the slide's own size and µm/px).",
        ),
    ] = None,
    slides_dir: Annotated[
        Path | None,
        typer.Option("--slides-dir", help="Folder to find slide files that moved since tiling."),
    ] = None,
    weights: Weights = None,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Attention / risk heatmaps per slide: PNG overlay, pyramidal TIFF, QuPath GeoJSON,
    top/bottom tile gallery."""
    from wsimm.heatmap import make_heatmaps

    one_line_warnings()
    rep = make_heatmaps(
        run,
        store,
        out,
        slides=slide,
        formats=fmt,
        fold=fold,
        overlap=overlap,
        device=device,
        weights=weights,
        slides_dir=slides_dir,
        quiet=quiet,
        score=score,
        scale=scale,
        smooth=smooth,
        cmap=cmap,
        alpha=alpha,
        top_k=top_k,
        tiff_downsample=tiff_downsample,
    )
    done = [r for r in rep.results if r["status"] == "done"]
    typer.echo(f"{len(done)} of {len(rep.results)} slides drawn into {rep.out}")
    for r in rep.failed:
        typer.echo(f"error: {r['slide_id']}: {r['error']}", err=True)
    if rep.failed:
        raise typer.Exit(1)


@app.command()
@handle_errors
def view(
    store: Annotated[Path, typer.Option("--store", help="Feature store (.zarr) of the run.")],
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="Run directory from wsimm train (without: the store's slides, no heatmaps).",
        ),
    ] = None,
    slides_dir: Annotated[
        Path | None,
        typer.Option(
            "--slides",
            "--slides-dir",
            help="Folder of the slide files, when they moved since tiling.",
        ),
    ] = None,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to serve on (0: any free).")
    ] = 8765,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; beyond loopback needs --allow-remote.")
    ] = "127.0.0.1",
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow a non-loopback --host (no login: anyone who "
            "reaches the port sees the slides and predictions).",
        ),
    ] = False,
    cmap: Annotated[
        str | None,
        typer.Option(
            "--cmap",
            help="Matplotlib colour map of attention layers (default: "
            "viridis; signed risk contributions use RdBu_r).",
        ),
    ] = None,
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the page in the default browser.")
    ] = False,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """Slides and heatmaps of a run in the browser: a local server and a zoomable viewer."""
    from wsimm.view import serve

    srv = serve(run, store, slides_dir=slides_dir, host=host, port=port,
                allow_remote=allow_remote, device=device, cmap=cmap)  # fmt: skip
    typer.echo(f"wsimm view: {srv.url} (Ctrl-C to stop)")
    if open_browser:
        import webbrowser

        webbrowser.open(srv.url)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.close()
        if not quiet:
            typer.echo("wsimm view: stopped")


@app.command()
@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for everything the demo makes.")] = (
        Path("wsimm-demo")
    ),
    patients: Annotated[int, typer.Option("--patients", min=4, help="Synthetic patients.")] = 12,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    quiet: Quiet = False,
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
    typer.echo(
        f"wsimm demo: {res.out} (report.json; view it with wsimm view --run {res.out / 'run'} "
        f"--store {res.out / 'features.zarr'})"
        if "run" in res.files
        else f"wsimm demo: {res.out} (report.json)"
    )
    failed = [p for s in res.steps for p in s.get("failed", [])]
    for p in failed:
        typer.echo(f"error: {p}", err=True)
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
