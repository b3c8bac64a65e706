"""Property-based fuzzing of the slide reader and the tiler with mutated slide files.

Hypothesis mutates a small pyramidal JPEG SVS (bytes flipped or overwritten anywhere, the
file cut short, junk appended) and runs the reading path a user's ``wsimm tile`` runs: open,
tissue detection, the tile grid and reading every tile. The property: each mutated file either
tiles or fails with a :class:`~wsimm.errors.WsimmError` whose message is one line naming the
file; no other exception escapes, and nothing hangs. A second property runs the full
``tile_slides`` pipeline into a store: a mutated slide is either complete (coords, tissue
fractions and features of one length) or absent, never half-written.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsimm.errors import WsimmError
from wsimm.testing import write_synthetic_slide

HANG_S = 60  # a mutated file that takes this long to read is a hang


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> bytes:
    d = tmp_path_factory.mktemp("fuzz")
    sl = write_synthetic_slide(d / "s.svs", width=1536, height=1024, seed=3, mpp=0.5)
    return sl.path.read_bytes()


@st.composite
def mutations(draw):
    """A list of edits: ('flip', at, byte) | ('cut', at) | ('junk', n), positions as
    fractions of the file so the same edit hits header, directory or tile data."""
    edits = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "flip", "flip", "cut", "junk", "zero"]))
        at = draw(st.floats(0.0, 1.0, allow_nan=False))
        if kind == "flip":
            edits.append(("flip", at, draw(st.integers(1, 255)), draw(st.integers(1, 64))))
        elif kind == "zero":
            edits.append(("zero", at, draw(st.integers(1, 4096))))
        elif kind == "cut":
            edits.append(("cut", at))
        else:
            edits.append(("junk", draw(st.integers(1, 2048))))
    return edits


def mutate(data: bytes, edits, seed: int = 0) -> bytes:
    b = bytearray(data)
    rng = np.random.default_rng(seed)
    for e in edits:
        if not b:
            break
        if e[0] == "flip":  # XOR a run of bytes
            i = int(e[1] * (len(b) - 1))
            for j in range(i, min(len(b), i + e[3])):
                b[j] ^= e[2]
        elif e[0] == "zero":
            i = int(e[1] * (len(b) - 1))
            b[i : i + e[2]] = bytes(len(b[i : i + e[2]]))
        elif e[0] == "cut":
            b = b[: int(e[1] * len(b))]
        else:
            b += rng.integers(0, 256, e[1], dtype=np.uint8).tobytes()
    return bytes(b)


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the body runs past ``seconds``."""

    def boom(*_):
        raise TimeoutError(f"reading a mutated slide took over {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _read_everything(path, backend: str) -> int:
    """What a chunk of ``wsimm tile`` does to a slide, in process: the tile count."""
    from wsimm.slide import open_slide
    from wsimm.tiling import TileSpec, plan_grid, read_tiles
    from wsimm.tissue import detect_tissue

    with open_slide(path, backend=backend) as s:
        tm = detect_tissue(s)
        spec = TileSpec(mpp=1.0, tile_px=128, min_tissue=0.1)
        grid = plan_grid(
            s.dimensions, s.level_downsamples, s.require_mpp(), spec,
            mask=tm.mask, mask_downsample=tm.downsample,
        )  # fmt: skip
        n = 0
        for batch in read_tiles(s, grid, batch_size=16):
            assert batch.dtype == np.uint8 and batch.shape[1:] == (128, 128, 3)
            n += len(batch)
        return n


FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@pytest.mark.parametrize("backend", ["auto", "tiffslide"])  # auto: openslide first
@FUZZ
@given(edits=mutations())
def test_mutated_slides_read_or_fail_with_a_wsimm_error(pristine, tmp_path, backend, edits):
    path = tmp_path / "mutated.svs"
    path.write_bytes(mutate(pristine, edits))
    try:
        with deadline(HANG_S):
            _read_everything(path, backend)
    except WsimmError as e:
        msg = str(e)
        assert "\n" not in msg, msg
        assert "mutated.svs" in msg, msg


@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(edits=mutations())
def test_mutated_slides_never_half_written_in_the_store(pristine, tmp_path_factory, edits):
    from wsimm.pipeline import tile_slides
    from wsimm.store import open_store
    from wsimm.tiling import TileSpec

    d = tmp_path_factory.mktemp("fz")
    (d / "mutated.svs").write_bytes(mutate(pristine, edits))
    (d / "good.svs").write_bytes(pristine)
    with deadline(3 * HANG_S):
        rep = tile_slides(
            [d / "good.svs", d / "mutated.svs"], d / "c.zarr", encoder="test_tiny",
            spec=TileSpec(mpp=1.0, tile_px=64, min_tissue=0.1), quiet=True, workers=1,
        )  # fmt: skip
    status = {r.slide_id: r for r in rep.results}
    assert status["good"].status == "done"  # one bad slide never stops the batch
    fs = open_store(d / "c.zarr")
    assert "good" in fs.slides()
    if status["mutated"].status == "done":
        n = len(fs.coords("mutated"))
        assert fs.features("mutated").shape[0] == n == len(fs.tissue_fraction("mutated"))
    else:
        err = status["mutated"].error
        assert "\n" not in err and "mutated.svs" in err, err
        assert "mutated" not in fs.all_slide_ids()  # no partial group left behind
