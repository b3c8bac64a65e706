"""The hostile-input sweep: every bad input a user can hand wsimm, through the command line,
with what wsimm must do. docs/reliability.md tabulates the same cases (a test keeps the two in
step): each bad slide, store or table gets one ``error:`` line naming the file and the fix, or
a documented behaviour; no traceback, nothing hangs, and the store holds only complete slides.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from wsimm.errors import WsimmWarning
from wsimm.store import open_store
from wsimm.testing import bags_to_store, make_mil_cohort, write_synthetic_slide
from wsimm_cli.main import app

runner = CliRunner()
DOCS = Path(__file__).parents[2] / "docs" / "reliability.md"

# -- slides ---------------------------------------------------------------------------------
# case id -> (file name, pattern of its one error line, or None when it must tile)
SLIDE_CASES = {
    "zero-byte": ("zero.svs", r"file is empty \(0 bytes\); re-copy"),
    "truncated": ("truncated.svs", r"damaged or truncated|cannot read|not a whole-slide"),
    "header-only": ("header.svs", r"not a whole-slide image wsimm can read"),
    "bit-flipped-directory": ("flipdir.svs", r"not a whole-slide image|damaged or truncated"),
    "corrupt-tile-data": ("badtiles.svs", r"damaged or truncated: re-copy it"),
    "text-as-svs": ("notes.svs", r"not a whole-slide image wsimm can read.*supported:"),
    "png-as-ndpi": ("photo.ndpi", r"not a whole-slide image wsimm can read"),
    "smaller-than-a-tile": ("tiny.svs", r"smaller than one 256-px tile.*--tile-px"),
    "no-tissue": ("blank.svs", r"no tissue tiles found.*--min-tissue"),
    "absurd-metadata-mpp": ("mpp9999.svs", r"9999 µm/px, outside the plausible.*--slide-mpp"),
    "zero-metadata-mpp": ("mpp0.svs", r"does not record its pixel size; pass it with --slide-mpp"),
    "unicode-name": ("slide ü 🧫 naïve.svs", None),
    "leading-dots-name": ("..hidden.svs", None),
}


@pytest.fixture(scope="module")
def bad_slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    good = write_synthetic_slide(d / "good.svs", width=2048, height=1536, seed=1).path
    data = good.read_bytes()
    files = {k: d / name for k, (name, _) in SLIDE_CASES.items()}
    files["zero-byte"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["header-only"].write_bytes(data[:64])
    b = bytearray(data)
    for i in range(8, 200):
        b[i] ^= 0x5A
    files["bit-flipped-directory"].write_bytes(bytes(b))
    files["corrupt-tile-data"].write_bytes(_corrupt_level0_tiles(good))
    files["text-as-svs"].write_text("this is not a slide\n" * 50)
    from PIL import Image

    Image.new("RGB", (500, 400), (200, 30, 30)).save(files["png-as-ndpi"], format="PNG")
    write_synthetic_slide(files["smaller-than-a-tile"], width=100, height=80, seed=2)
    write_synthetic_slide(files["no-tissue"], width=2048, height=1536, seed=3, tissue_fraction=0)
    assert b"MPP = 0.25" in data  # the Aperio description of every level
    files["absurd-metadata-mpp"].write_bytes(data.replace(b"MPP = 0.25", b"MPP = 9999"))
    files["zero-metadata-mpp"].write_bytes(data.replace(b"MPP = 0.25", b"MPP = 0.00"))
    shutil.copy(good, files["unicode-name"])
    shutil.copy(good, files["leading-dots-name"])
    return d, good, files


def _corrupt_level0_tiles(path: Path) -> bytes:
    """The slide with the JPEG data of its level-0 tiles overwritten by junk (the header
    and lower levels intact, so it opens and detects tissue, then fails reading tiles)."""
    import tifffile

    b = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        rng = np.random.default_rng(0)
        for off, n in zip(page.dataoffsets, page.databytecounts, strict=True):
            b[off + 2 : off + n] = rng.integers(0, 256, n - 2, dtype=np.uint8).tobytes()
    return bytes(b)


def _errors(r) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


def _no_traceback(r) -> None:
    assert "Traceback" not in r.output and "Traceback" not in r.stderr, r.output + r.stderr


def test_bad_slides_in_one_batch_each_get_one_line(bad_slides, tmp_path):
    _, good, files = bad_slides
    store = tmp_path / "c.zarr"
    args = ["tile", str(good), *map(str, files.values()), "--store", str(store)]
    r = runner.invoke(app, [*args, "--encoder", "test_tiny", "--quiet"])
    _no_traceback(r)
    assert r.exit_code == 1  # some slides failed
    errors = _errors(r)
    for case, (_, pattern) in SLIDE_CASES.items():
        mine = [e for e in errors if e.startswith(f"error: {files[case]}:")]
        if pattern is None:
            assert not mine, (case, mine)
            continue
        assert len(mine) == 1, (case, errors)
        assert re.search(pattern, mine[0]), (case, mine[0])
    assert len(errors) == sum(p is not None for _, p in SLIDE_CASES.values())
    fs = open_store(store)
    # only complete slides, none half-written; odd names get safe ids
    kept = ["good", "hidden", "slide_ü___naïve"]
    assert sorted(fs.all_slide_ids()) == sorted(fs.slides()) == kept
    n = len(fs.coords("good"))
    assert fs.features("slide_ü___naïve").shape[0] == n  # the same pixels, the same tiles
    r2 = runner.invoke(app, ["info", *map(str, files.values())])
    _no_traceback(r2)
    assert r2.exit_code == 1


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--slide-mpp", "0"], r"MPP override 0.0 is not a plausible"),
        (["--slide-mpp", "-1"], r"MPP override -1.0 is not a plausible"),
        (["--slide-mpp", "nan"], r"MPP override nan is not a plausible"),
        (["--slide-mpp", "inf"], r"MPP override inf is not a plausible"),
        (["--slide-mpp", "1e6"], r"not a plausible µm/px"),
        (["--mpp", "0"], r"target --mpp 0.0 is not a plausible"),
        (["--mpp", "1e6"], r"target --mpp 1000000.0 is not a plausible"),
        (["--tile-px", "0"], r"--tile-px 0 must be between 8 and 8192"),
        (["--overlap", "1.5"], r"--overlap 1.5 must be in \[0, 1\)"),
        (["--min-tissue", "2"], r"--min-tissue 2.0 must be in \[0, 1\]"),
    ],
    ids=[
        "slide-mpp-0", "slide-mpp-negative", "slide-mpp-nan", "slide-mpp-inf", "slide-mpp-huge",
        "mpp-0", "mpp-huge", "tile-px-0", "overlap-over-1", "min-tissue-over-1",
    ],
)  # fmt: skip
def test_absurd_options_are_one_line_errors(bad_slides, tmp_path, args, pattern):
    _, good, _ = bad_slides
    store = tmp_path / "c.zarr"
    r = runner.invoke(app, ["tile", str(good), "--store", str(store), "--encoder", "test_tiny",
                            "--quiet", *args])  # fmt: skip
    _no_traceback(r)
    assert r.exit_code != 0
    (err,) = _errors(r)
    assert re.search(pattern, err), err
    assert not store.exists() or open_store(store).all_slide_ids() == []


def test_missing_paths_and_empty_folders_refused_before_any_work(bad_slides, tmp_path):
    _, good, _ = bad_slides
    store = tmp_path / "c.zarr"
    dangling = tmp_path / "dangling.svs"
    os.symlink(tmp_path / "nowhere" / "x.svs", dangling)
    (tmp_path / "empty").mkdir()
    cases = [
        (tmp_path / "missing.svs", r"no such file or folder; check the path"),
        (dangling, r"no such file or folder"),
        (tmp_path / "empty", r"folder holds no slide files"),
    ]
    for path, pattern in cases:
        r = runner.invoke(app, ["tile", str(good), str(path), "--store", str(store),
                                "--encoder", "test_tiny", "--quiet"])  # fmt: skip
        _no_traceback(r)
        assert r.exit_code == 1
        (err,) = _errors(r)
        assert str(path) in err and re.search(pattern, err), err
        assert not store.exists()  # a typo in one path: nothing tiled, no store made


def test_two_files_with_one_slide_id_are_refused(bad_slides, tmp_path):
    _, good, _ = bad_slides
    (tmp_path / "in").mkdir()
    shutil.copy(good, tmp_path / "in" / "a b.svs")
    shutil.copy(good, tmp_path / "in" / "a_b.svs")
    r = runner.invoke(app, ["tile", str(tmp_path / "in"), "--store", str(tmp_path / "c.zarr"),
                            "--encoder", "test_tiny"])  # fmt: skip
    _no_traceback(r)
    assert r.exit_code == 1
    (err,) = _errors(r)
    assert "would share the slide id 'a_b'; rename one" in err


# -- stores ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_stores(tmp_path_factory):
    import zarr

    d = tmp_path_factory.mktemp("stores")
    fs = open_store(d / "v99.zarr", "a")
    fs._root.attrs["wsimm"] = {**fs.attrs, "encoding-version": 99}
    zarr.open_group(d / "foreign.zarr", mode="w").create_group("x")
    (d / "file.zarr").write_text("hello")
    open_store(d / "damaged.zarr", "a")
    (d / "damaged.zarr" / "zarr.json").write_text("{not json")
    (d / "notes").mkdir()
    (d / "notes" / "todo.txt").write_text("not a store")
    return {
        "store-other-version": (d / "v99.zarr", r"store format version 99.*re-tile"),
        "store-foreign-zarr": (d / "foreign.zarr", r"not a wsimm feature store; choose another"),
        "store-is-a-file": (d / "file.zarr", r"exists and is not a folder; choose another"),
        "store-damaged-metadata": (d / "damaged.zarr", r"not a Zarr store.*re-tile"),
        "store-folder-of-other-files": (d / "notes", r"not a Zarr store; choose another|Zarr"),
        "store-missing": (d / "missing.zarr", r"no such feature store; create it with wsimm tile"),
    }


def test_bad_stores_are_one_line_errors_and_left_untouched(bad_stores, bad_slides, tmp_path):
    _, good, _ = bad_slides
    labels = tmp_path / "l.csv"
    pd.DataFrame({"patient_id": ["p"], "slide_id": ["good"], "grade": [1]}).to_csv(labels)
    for case, (store, pattern) in bad_stores.items():
        before = sorted(p.name for p in store.iterdir()) if store.is_dir() else None
        commands = [
            [
                "train",
                "--store",
                str(store),
                "--labels",
                str(labels),
                "--task",
                "grade",
                "--out",
                str(tmp_path / "r"),
            ],
            ["export-h5", str(store), "--out", str(tmp_path / "h5")],
            ["embed", str(store), "--encoder", "test_tiny"],
        ]
        if case != "store-missing":  # tile creates a missing store: that is its job
            commands.append(["tile", str(good), "--store", str(store), "--encoder", "none"])
        for cmd in commands:
            r = runner.invoke(app, [*cmd, "--quiet"] if cmd[0] != "export-h5" else cmd)
            _no_traceback(r)
            assert r.exit_code == 1, (case, cmd, r.output)
            (err,) = _errors(r)
            assert str(store) in err and re.search(pattern, err), (case, cmd[0], err)
        after = sorted(p.name for p in store.iterdir()) if store.is_dir() else None
        assert before == after, case  # nothing written into someone else's folder
        assert not (tmp_path / "r").exists()


# -- tables -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    c = make_mil_cohort(24, task="survival", seed=6, feature_dim=8, tiles_per_slide=(10, 20))
    bags_to_store(c.bags, d / "s.zarr")
    return c.labels, d / "s.zarr"


def _single_slide_rows(lab: pd.DataFrame) -> pd.Index:
    counts = lab.groupby("patient_id")["slide_id"].transform("count")
    return lab.index[counts == 1]


def _edit(name: str, lab: pd.DataFrame) -> pd.DataFrame | bytes:
    i = _single_slide_rows(lab)[0]  # a patient with one row, so one edit changes its outcome
    at = lab.index == i
    return {
        "duplicate-rows": lambda: pd.concat([lab, lab.iloc[:3]]),
        "patient-two-outcomes": lambda: pd.concat([lab, lab.loc[[i]].assign(time=999.0)]),
        "slide-two-patients": lambda: pd.concat([lab, lab.loc[[i]].assign(patient_id="OTHER")]),
        "empty-patient-id": lambda: lab.assign(patient_id=lab["patient_id"].where(~at)),
        "empty-slide-id": lambda: lab.assign(slide_id=lab["slide_id"].where(~at)),
        "time-not-a-number": lambda: lab.assign(time=lab["time"].astype(object).where(~at, "12mo")),
        "time-nan": lambda: lab.assign(time=lab["time"].where(~at)),
        "time-infinite": lambda: lab.assign(time=lab["time"].where(~at, np.inf)),
        "time-negative": lambda: lab.assign(time=lab["time"].where(~at, -3.0)),
        "event-words": lambda: lab.assign(event=np.where(lab["event"] == 1, "dead", "alive")),
        "event-2": lambda: lab.assign(event=lab["event"].where(~at, 2)),
        "event-as-float": lambda: lab.assign(event=lab["event"].astype(float)),
        "missing-column": lambda: lab.drop(columns="event"),
        "no-matching-slides": lambda: lab.assign(slide_id="X" + lab["slide_id"]),
        "traversal-slide-id": lambda: lab.assign(slide_id=lab["slide_id"].where(~at, "../../x")),
        "header-only": lambda: lab.iloc[:0],
        "binary-file": lambda: os.urandom(400),
        "empty-file": lambda: b"",
    }[name]()


# case id -> pattern of the one error line, or None: it trains (with the warning given)
TABLE_CASES = {
    "duplicate-rows": None,
    "patient-two-outcomes": r"different outcomes on different rows",
    "slide-two-patients": r"belong to more than one patient",
    "empty-patient-id": r"empty patient_id on line\(s\) \d+",
    "empty-slide-id": None,
    "time-not-a-number": r"time is missing, not a number",
    "time-nan": r"time is missing, not a number",
    "time-infinite": r"infinite or negative",
    "time-negative": r"infinite or negative",
    "event-words": r"event must be 0 or 1",
    "event-2": r"event must be 0 or 1",
    "event-as-float": None,
    "missing-column": r"missing column\(s\) event.*--event-col",
    "no-matching-slides": r"no row matches a slide in the store; check --slide-col",
    "traversal-slide-id": None,
    "header-only": r"no row matches a slide",
    "binary-file": r"cannot read the table",
    "empty-file": r"cannot read the table",
}
TABLE_WARNINGS = {  # the warning a case that trains must give
    "empty-slide-id": r"have no slide in the store and are left out",
    "traversal-slide-id": r"not \(complete\) in the store: x; they are ignored",
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_bad_labels_tables(cohort, tmp_path, case):
    lab, store = cohort
    table = _edit(case, lab)
    path = tmp_path / f"{case}.csv"
    if isinstance(table, bytes):
        path.write_bytes(table)
    else:
        table.to_csv(path, index=False)
    out = tmp_path / "run"
    args = ["train", "--store", str(store), "--labels", str(path), "--task", "survival"]
    args += ["--out", str(out), "--folds", "2", "--epochs", "1", "--quiet"]
    pattern = TABLE_CASES[case]
    with warnings.catch_warnings(record=True) as said:  # notes, not errors, here
        warnings.simplefilter("always", WsimmWarning)
        r = runner.invoke(app, args)
    _no_traceback(r)
    if pattern is None:  # a documented behaviour: it trains, every kept patient scored once
        assert r.exit_code == 0, r.output
        pred = pd.read_csv(out / "predictions.csv")
        assert pred["patient_id"].is_unique
        notes = [str(w.message) for w in said if issubclass(w.category, WsimmWarning)]
        if case in TABLE_WARNINGS:
            assert any(re.search(TABLE_WARNINGS[case], n) for n in notes), notes
        else:
            assert not notes, notes
        return
    assert r.exit_code == 1, r.output
    (err,) = _errors(r)
    assert str(path) in err and re.search(pattern, err), err
    assert not out.exists()  # refused before anything was written


def test_missing_labels_file(cohort, tmp_path):
    _, store = cohort
    r = runner.invoke(
        app, ["train", "--store", str(store), "--labels", str(tmp_path / "no.csv"), "--task",
              "grade", "--out", str(tmp_path / "r"), "--quiet"]
    )  # fmt: skip
    _no_traceback(r)
    assert r.exit_code == 1
    (err,) = _errors(r)
    assert "no.csv" in err


# -- the docs table ---------------------------------------------------------------------------
def test_docs_table_lists_every_case(bad_stores):
    text = DOCS.read_text()
    cases = [*SLIDE_CASES, *TABLE_CASES, *bad_stores]
    cases += ["slide-mpp-0", "mpp-0", "tile-px-0", "overlap-over-1", "min-tissue-over-1"]
    cases += ["missing-path", "dangling-symlink", "empty-folder", "slide-id-collision"]
    missing = [c for c in cases if f"`{c}`" not in text]
    assert not missing, f"docs/reliability.md lacks rows for {missing}"


@pytest.mark.parametrize(
    "case", ["text-as-svs", "zero-metadata-mpp", "no-tissue", "corrupt-tile-data", "zero-byte"]
)
def test_a_failed_tile_run_leaves_no_store_it_created(bad_slides, tmp_path, case):
    _, _, files = bad_slides
    store = tmp_path / "c.zarr"
    r = runner.invoke(app, ["tile", str(files[case]), "--store", str(store), "--encoder",
                            "test_tiny", "--quiet"])  # fmt: skip
    _no_traceback(r)
    assert r.exit_code == 1 and len(_errors(r)) == 1
    assert not store.exists()


def test_a_failed_tile_run_keeps_a_store_that_was_there(bad_slides, tmp_path):
    _, good, files = bad_slides
    store = tmp_path / "c.zarr"
    r = runner.invoke(app, ["tile", str(good), "--store", str(store), "--encoder", "test_tiny",
                            "--quiet"])  # fmt: skip
    assert r.exit_code == 0
    # --quiet: one line of totals that names the store
    assert r.stdout.strip().splitlines() == [f"wsimm tile: 1 done, 0 skipped, 0 failed -> {store}"]
    r = runner.invoke(app, ["tile", str(files["text-as-svs"]), "--store", str(store),
                            "--encoder", "test_tiny", "--quiet"])  # fmt: skip
    assert r.exit_code == 1 and open_store(store).slides() == ["good"]


def test_training_on_an_empty_store_says_it_is_empty(tmp_path):
    open_store(tmp_path / "empty.zarr", "a")
    (tmp_path / "l.csv").write_text("patient_id,slide_id,grade\nP1,S1,0\nP2,S2,1\n")
    r = runner.invoke(app, ["train", "--store", str(tmp_path / "empty.zarr"), "--labels",
                            str(tmp_path / "l.csv"), "--task", "grade", "--out",
                            str(tmp_path / "run"), "--quiet"])  # fmt: skip
    _no_traceback(r)
    (err,) = _errors(r)
    assert "holds no complete slide" in err and "wsimm tile" in err
    assert not (tmp_path / "run").exists()


def test_a_failed_train_leaves_no_run_folder_it_created(tmp_path):
    pytest.importorskip("torch")
    from wsimm.testing import bags_to_store, make_mil_cohort

    c = make_mil_cohort(12, seed=1, feature_dim=8, tiles_per_slide=(5, 10))
    bags_to_store(c.bags, tmp_path / "s.zarr")
    c.labels.to_csv(tmp_path / "l.csv", index=False)
    base = ["train", "--store", str(tmp_path / "s.zarr"), "--labels", str(tmp_path / "l.csv"),
            "--task", "grade", "--quiet", "--folds", "3"]  # fmt: skip
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "run"), "--model", "abmill"])
    _no_traceback(r)
    (err,) = _errors(r)
    assert "unknown MIL model 'abmill'" in err and "abmil" in err
    assert not (tmp_path / "run").exists()
    # a failure after config.yaml and splits.csv were written: a model option the model
    # refuses when the first fold builds it
    (tmp_path / "run.yaml").write_text("model_kwargs: {no_such_option: 1}\n")
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "run2"), "--config",
                            str(tmp_path / "run.yaml")])  # fmt: skip
    _no_traceback(r)
    (err,) = _errors(r)
    assert "no_such_option" in err and not (tmp_path / "run2").exists()
    # a folder that existed before keeps what it had
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "mine"), "--model", "abmill"])
    assert r.exit_code != 0 and (tmp_path / "mine" / "notes.txt").read_text() == "keep"
