"""The typer app through CliRunner, and the installed command as a subprocess."""

from __future__ import annotations

import inspect
import json
import subprocess

import pytest
from typer.testing import CliRunner

from tests.conftest import shared_slide
from wsimm_cli.main import app

runner = CliRunner()


def test_version_and_help():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("wsimm ")
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in (
        "info",
        "tile",
        "embed",
        "encoders",
        "export-h5",
        "import-h5",
        "train",
        "predict",
        "heatmap",
        "demo",
    ):
        assert cmd in r.stdout


def test_info_table_and_json(synthetic_slide):
    r = runner.invoke(app, ["info", str(synthetic_slide.path)])
    assert r.exit_code == 0, r.output
    assert "synthetic.svs" in r.stdout and "aperio.MPP" in r.stdout and "0.5" in r.stdout
    r = runner.invoke(app, ["info", "--json", str(synthetic_slide.path)])
    assert r.exit_code == 0
    (row,) = json.loads(r.stdout)
    assert row["width"] == 4096 and row["mpp_x"] == 0.5 and row["backend"] == "openslide"


def test_info_bad_input_is_one_line_and_nonzero(tmp_path, synthetic_slide):
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    r = runner.invoke(app, ["info", str(synthetic_slide.path), str(bad), str(tmp_path / "no.svs")])
    assert r.exit_code == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "Traceback" not in r.output
    assert "synthetic.svs" in r.stdout  # the good slide is still shown


def test_info_real_slides_json():
    path = shared_slide("CMU-1-Small-Region.svs")
    r = runner.invoke(app, ["info", "--json", str(path)])
    assert r.exit_code == 0
    row = json.loads(r.stdout)[0]
    assert (row["width"], row["height"], row["mpp_x"]) == (2220, 2967, 0.499)


def test_info_4d_ome_tiff_rejected_without_traceback():
    path = shared_slide("synthetic/4D-series.ome.tiff")
    proc = subprocess.run(["wsimm", "info", str(path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "4 dimensions" in lines[0]


def test_slide_mpp_override(synthetic_slide):
    r = runner.invoke(app, ["info", "--json", "--slide-mpp", "0.25", str(synthetic_slide.path)])
    row = json.loads(r.stdout)[0]
    assert row["mpp_x"] == 0.25 and row["mpp_source"] == "user override"
    r = runner.invoke(app, ["info", "--slide-mpp", "9999", str(synthetic_slide.path)])
    assert r.exit_code == 1 and "plausible" in r.stderr


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out), "--patients", "4", "--quiet"])
    assert r.exit_code == 0, r.output
    # --quiet: one line, saying where the output went
    assert r.stdout.strip().splitlines() == [f"wsimm demo: {out} (report.json)"]
    report = json.loads((out / "report.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["cohort"]["slides"] >= 3
    assert steps["inspect"]["failed"] == []
    assert (out / "tables" / "labels.csv").exists()
    # the demo tiles every slide into the store, with a QC image each
    assert steps["tile"]["failed"] == [] and steps["tile"]["done"] == steps["cohort"]["slides"]
    assert steps["tile"]["tiles"] > 0
    assert len(list((out / "qc").glob("*.png"))) == steps["cohort"]["slides"]
    assert "skipped" in steps["train"]  # too few patients for cross-validation


def test_demo_trains_on_its_store(tmp_path):
    from wsimm.demo import run_demo

    res = run_demo(tmp_path / "d", n_patients=12, quiet=True, slide_size=(2048, 1536))
    steps = {s["step"]: s for s in res.steps}
    assert steps["train"]["failed"] == [] and steps["train"]["patients"] >= 9
    assert (tmp_path / "d" / "run" / "metrics.json").is_file()
    assert steps["heatmap"]["failed"] == [] and steps["heatmap"]["slides"] == 3
    hm = tmp_path / "d" / "heatmaps"
    assert len(list(hm.glob("*.png"))) == 6 and len(list(hm.glob("*.geojson"))) == 3


def test_encoders_listing_and_bad_options_are_one_line(tmp_path, synthetic_slide):
    r = runner.invoke(app, ["encoders"])
    assert r.exit_code == 0
    for name in ("resnet50_trunc", "uni", "virchow2", "h-optimus-0", "timm:<name>"):
        assert name in r.stdout
    r = runner.invoke(app, ["tile", str(synthetic_slide.path), "--store", str(tmp_path / "s.zarr"),
                            "--stain-norm", "reinhard"])  # fmt: skip
    assert r.exit_code == 1 and "--stain-norm" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["embed", str(tmp_path / "none.zarr"), "--encoder", "mean_rgb"])
    assert r.exit_code == 1 and "no such feature store" in r.output
    assert not (tmp_path / "none.zarr").exists()


def test_train_and_predict_from_the_command_line(tmp_path):
    from wsimm.testing import bags_to_store, make_mil_cohort

    c = make_mil_cohort(20, task="grade", seed=2, feature_dim=8, tiles_per_slide=(10, 20))
    bags_to_store(c.bags, tmp_path / "s.zarr")
    c.labels.to_csv(tmp_path / "labels.csv", index=False)
    (tmp_path / "run.yaml").write_text("epochs: 2\nfolds: 2\nmodel: abmil_gated\n")
    args = ["train", "--store", str(tmp_path / "s.zarr"), "--labels", str(tmp_path / "labels.csv")]
    r = runner.invoke(
        app,
        [
            *args,
            "--task",
            "grade",
            "--out",
            str(tmp_path / "run"),
            "--config",
            str(tmp_path / "run.yaml"),
            "--seed",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "mean ± sd" in r.stdout and "auc" in r.stdout
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "model: abmil_gated" in cfg and "seed: 3" in cfg
    r = runner.invoke(
        app,
        [
            "predict",
            "--run",
            str(tmp_path / "run"),
            "--store",
            str(tmp_path / "s.zarr"),
            "--out",
            str(tmp_path / "p.csv"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p.csv").read_text().count("\n") == len(c.bags) + 1
    # bad input: one line, non-zero, no traceback
    r = runner.invoke(
        app, [*args, "--task", "survival", "--time-col", "nope", "--out", str(tmp_path / "r2")]
    )
    assert r.exit_code == 1 and "missing column(s) nope" in r.output
    assert "Traceback" not in r.output
    # --quiet: one line, saying where the run went
    r = runner.invoke(app, [*args, "--task", "grade", "--out", str(tmp_path / "r3"), "--config",
                            str(tmp_path / "run.yaml"), "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().splitlines() == [
        f"wsimm train: {tmp_path / 'r3'} (metrics.json, predictions.csv)"
    ]
    r = runner.invoke(app, [*args, "--task", "grading", "--out", str(tmp_path / "r3")])
    assert r.exit_code == 1 and "--task must be one of grade, survival" in r.output


def test_tile_default_encoder_is_real_and_offline_fails_fast(tmp_path, synthetic_slide):
    """No --encoder means CLAM's resnet50_trunc, never the test encoder; offline (no cached
    weights) it stops at once with one line that says to pass --weights, and leaves no store."""
    import os
    import time

    pytest.importorskip("timm")
    from wsimm.pipeline._tile import tile_slides

    assert inspect.signature(tile_slides).parameters["encoder"].default == "resnet50_trunc"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    t = time.perf_counter()
    r = subprocess.run(["wsimm", "tile", str(synthetic_slide.path), "--store",
                        str(tmp_path / "s.zarr"), "--quiet"], capture_output=True, text=True,
                       env=env)  # fmt: skip
    assert time.perf_counter() - t < 60
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "resnet50_trunc" in lines[0] and "--weights PATH" in lines[0]
    assert not (tmp_path / "s.zarr").exists()


def test_train_help_shows_every_default_and_what_is_required(tmp_path):
    """Each option of wsimm train with a default shows it in --help, equal to the default
    TrainConfig uses; --labels, --task and --out say they are required and are enforced."""
    import dataclasses

    import typer

    from wsimm.train import TrainConfig

    cmd = typer.main.get_command(app).commands["train"]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    shown = {}
    for p in cmd.params:
        if p.name in ("labels", "task", "out", "store"):
            assert "Required" in p.help, p.name
        elif p.name in defaults and defaults[p.name] not in (None, dataclasses.MISSING):
            want = defaults[p.name]
            want = ("tune" if want else "no-tune") if p.name == "tune" else want
            assert p.show_default == str(want), (p.name, p.show_default, want)
            shown[p.name] = p.show_default
        assert p.help, f"--{p.name} has no help"
    assert {"label_col", "patient_col", "slide_col", "folds", "epochs", "lr", "seed",
            "max_tiles", "batch_size"} <= set(shown)  # fmt: skip
    text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "240"}).output
    for d in ("[default: (grade)]", "[default: (patient_id)]", "[default: (0.001)]"):
        assert d in text
    (tmp_path / "l.csv").write_text("patient_id,slide_id,grade\n")
    for missing in ("--labels", "--task", "--out"):
        args = {"--labels": str(tmp_path / "l.csv"), "--task": "grade", "--out": "r"}
        args.pop(missing)
        r = runner.invoke(app, ["train", *[x for kv in args.items() for x in kv]])
        assert r.exit_code == 1 and f"{missing} " in r.output and "is required" in r.output


def test_h5_commands_show_progress_unless_quiet(tmp_path):
    """export-h5 and import-h5 draw a progress bar on stderr; --quiet leaves only the
    summary line on stdout."""
    pytest.importorskip("h5py")
    from wsimm.testing import bags_to_store, make_mil_cohort

    c = make_mil_cohort(4, task="grade", seed=2, feature_dim=8, tiles_per_slide=(5, 9))
    bags_to_store(c.bags, tmp_path / "s.zarr")
    runs = {}
    for quiet in ([], ["--quiet"]):
        out = tmp_path / f"h5{len(quiet)}"
        e = subprocess.run(["wsimm", "export-h5", str(tmp_path / "s.zarr"), "--out", str(out),
                            *quiet], capture_output=True, text=True)  # fmt: skip
        i = subprocess.run(["wsimm", "import-h5", str(out), "--store", str(out / "b.zarr"),
                            "--encoder", "e", *quiet], capture_output=True, text=True)  # fmt: skip
        assert e.returncode == 0 and i.returncode == 0, e.stderr + i.stderr
        runs[bool(quiet)] = (e, i)
    for r in runs[False]:
        assert "h5" in r.stderr and f"{len(c.bags)}/{len(c.bags)}" in r.stderr
    for r in runs[True]:
        assert r.stderr == "" and len(r.stdout.strip().splitlines()) == 1
