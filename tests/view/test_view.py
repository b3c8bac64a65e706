"""``wsimm view`` (issue 24): a demo run served over HTTP and driven in a real headless browser.

The HTTP tests read deep-zoom tiles at several levels and compare them with the slide read
through ``read_region`` (block-averaged to the level); overlay tiles are compared with the run's
scores through the colour map. The browser test drives Debian's Chromium with selenium: the slide
renders, the overlay's colour appears over the most attended tile, the opacity slider moves the
pixel between the slide's colour and the colour map's, clicking a top tile recentres the view.
Browser tests skip when Chromium or selenium is missing, unless ``WSIMM_REQUIRE_BROWSER=1`` (CI).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from PIL import Image

from wsimm.errors import ConfigError
from wsimm.heatmap._render import _lut
from wsimm.slide import open_slide
from wsimm.store import open_store
from wsimm.view import DeepZoom, TileCache, serve


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from wsimm.demo import run_demo

    d = tmp_path_factory.mktemp("view")
    res = run_demo(d / "demo", n_patients=9, slide_size=(2048, 1536), quiet=True)
    assert "run" in res.files, res.steps
    return res.out


@pytest.fixture(scope="module")
def server(demo):
    srv = serve(demo / "run", demo / "features.zarr", port=0, device="cpu").start()
    yield srv
    srv.close()


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers["Content-Type"]


def _raw(srv, method: str, path: str) -> tuple[int, bytes]:
    """A request sent as written (no client-side normalisation of ``..``)."""
    host, port = srv.httpd.server_address[:2]
    c = http.client.HTTPConnection(host, port, timeout=60)
    c.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def _block_mean(a: np.ndarray, ds: int, w: int, h: int) -> np.ndarray:
    a = a[: h * ds, : w * ds].astype(np.float64)
    return a.reshape(h, ds, w, ds, 3).mean((1, 3))


def test_deep_zoom_geometry():
    dz = DeepZoom(2049, 1000, 256)
    assert dz.max_level == 12  # 2 ** 12 >= 2049
    assert dz.level_size(12) == (2049, 1000) and dz.level_size(11) == (1025, 500)
    assert dz.level_size(0) == (1, 1)
    assert dz.grid(12) == (9, 4)
    # the last column is cut to the level: 2049 - 8 * 256 = 1 pixel
    assert dz.tile_box(12, 8, 3) == (2048, 768, 1, 1000 - 768, 1)
    assert dz.grid(10) == (3, 1)  # 513 px: two full columns and one of 1 px
    assert dz.tile_box(10, 1, 0) == (1024, 0, 256, 250, 4)
    assert dz.tile_box(10, 2, 0) == (2048, 0, 1, 250, 4)
    for bad in [(13, 0, 0), (-1, 0, 0), (12, 9, 0), (12, 0, 4)]:
        with pytest.raises(ConfigError):
            dz.tile_box(*bad)


def test_tile_cache_is_bounded_in_bytes():
    c = TileCache(max_bytes=100)
    for i in range(10):
        c.put(i, bytes(30))
    assert c.nbytes <= 100 and len(c) == 3
    assert c.get(0) is None and c.get(9) == bytes(30)
    c.put("big", bytes(101))  # larger than the cache: not kept
    assert c.get("big") is None


def test_slide_tiles_over_http_match_read_region(server, demo):
    fs = open_store(demo / "features.zarr")
    sid = fs.slides()[0]
    info = json.loads(_get(server.url + f"api/slide/{sid}")[1])
    dz = DeepZoom(**{k: info["dz"][k] for k in ("width", "height", "tile")})
    assert info["dz"]["max_level"] == dz.max_level and info["image"]
    slide = open_slide(fs.slide_attrs(sid)["source"])
    top = dz.max_level
    # full-resolution tiles under two of the store's tissue tiles, a background corner, and
    # coarser levels
    xy = fs.coords(sid)[[0, len(fs.coords(sid)) // 2]] + 8
    on_tissue = [(top, int(x // 256), int(y // 256)) for x, y in xy]
    checked = 0
    # ... and the coarsest levels, whose last pixel reaches past the slide (1536 / 1024 -> 2
    # rows): the part outside is white, as read_region pads it
    cases = [(top, 0, 0), *on_tissue, (top - 1, 1, 1), (top - 2, 1, 1), (top - 3, 0, 0),
             (top - 5, 0, 0), (top - 10, 0, 0), (0, 0, 0)]  # fmt: skip
    for level, col, row in cases:
        status, body, ctype = _get(server.url + f"tiles/{sid}/{level}/{col}_{row}.jpeg")
        assert status == 200 and ctype == "image/jpeg"
        img = np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(np.float64)
        x0, y0, w, h, ds = dz.tile_box(level, col, row)
        assert img.shape == (h, w, 3)
        want = _block_mean(slide.read_region((x0, y0), 0, (w * ds, h * ds)), ds, w, h)
        err = np.abs(img - want).mean()
        assert err < 6, (level, col, row, err)
        if (level, col, row) in on_tissue:  # a neighbouring tile is far off: the check can fail
            other = slide.read_region((x0 - dz.tile, y0), 0, (w, h)).astype(np.float64)
            assert np.abs(img - other).mean() > 2 * err + 5
        checked += 1
    assert checked == 9
    # the edge tile at full resolution is cut to the slide, not padded
    cols, rows = dz.grid(top)
    _, body, _ = _get(server.url + f"tiles/{sid}/{top}/{cols - 1}_{rows - 1}.jpeg")
    assert Image.open(io.BytesIO(body)).size == dz.tile_box(top, cols - 1, rows - 1)[2:4]
    slide.close()


def test_overlay_tiles_colour_the_scores(server, demo):
    fs = open_store(demo / "features.zarr")
    sid = fs.slides()[1]
    info = json.loads(_get(server.url + f"api/slide/{sid}")[1])
    lay = info["layers"][0]
    assert lay["name"] == info["primary"] == "attention" and lay["cmap"] == "viridis"
    assert len(lay["top"]) == 8 and lay["top"][0]["value"] >= lay["top"][-1]["value"]
    view = server.app.layer(sid, "attention")["view"]
    ts = server.app.scores(sid)
    dz = DeepZoom(**{k: info["dz"][k] for k in ("width", "height", "tile")})
    level = dz.max_level - 3  # 8 level-0 px per pixel: the demo slide in one 256 x 192 tile
    status, body, ctype = _get(server.url + f"overlay/{sid}/attention/{level}/0_0.png")
    assert status == 200 and ctype == "image/png"
    img = np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))
    lut = _lut("viridis")
    mask, mds = fs.tissue_mask(sid)
    seen = 0
    for i in range(len(ts)):
        cx, cy = ts.coords[i] + ts.tile_size0 / 2
        if not mask[int(cy / mds), int(cx / mds)]:
            continue  # off the tissue mask the overlay is transparent
        px = img[int(cy / 8), int(cx / 8)]
        assert px[3] == 255
        k = int(np.clip(view.values[i] * 255, 0, 255))
        assert np.array_equal(px[:3], lut[k]), (i, px, lut[k])
        seen += 1
    assert seen >= len(ts) // 2
    assert img[0, 0, 3] == 0  # the slide's corner is background: transparent


def test_run_and_slide_json(server, demo):
    status, body, _ = _get(server.url + "api/run")
    run = json.loads(body)
    assert status == 200 and run["task"] == "grade" and run["model"] == "abmil"
    fs = open_store(demo / "features.zarr")
    assert [s["id"] for s in run["slides"]] == fs.slides()
    preds = {str(p) for p in __import__("pandas").read_csv(demo / "run" / "predictions.csv")
             ["patient_id"]}  # fmt: skip
    assert {s["patient_id"] for s in run["slides"]} <= preds | {None}
    sid = run["slides"][0]["id"]
    info = json.loads(_get(server.url + f"api/slide/{sid}")[1])
    assert info["patient"]["patient_id"] == run["slides"][0]["patient_id"]
    assert "label" in info["patient"] and "pred" in info["patient"]
    assert info["mpp"] == pytest.approx(fs.slide_attrs(sid)["mpp"])


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/static/../../../etc/passwd", 400),
        ("GET", "/static/%2e%2e/%2e%2e/etc/passwd", 400),
        ("GET", "/static/passwd", 404),
        ("GET", "/etc/passwd", 404),
        ("GET", "/tiles/..%2F..%2F..%2Fetc%2Fpasswd/0/0_0.jpeg", 404),
        ("GET", "/tiles/%00/0/0_0.jpeg", 400),
        ("GET", "/tiles/{sid}/99/0_0.jpeg", 404),
        ("GET", "/tiles/{sid}/-1/0_0.jpeg", 400),
        ("GET", "/tiles/{sid}/11/abc.jpeg", 400),
        ("GET", "/tiles/{sid}/11/1_2_3.jpeg", 400),
        ("GET", "/tiles/{sid}/11/0_0.png", 400),
        ("GET", "/tiles/{sid}/11/999_999.jpeg", 404),
        ("GET", "/tiles/{sid}/11/99999999999999_0.jpeg", 400),
        ("GET", "/overlay/{sid}/nolayer/0/0_0.png", 404),
        ("GET", "/overlay/{sid}/..%2F..%2Fconfig.yaml/0/0_0.png", 404),
        ("GET", "/api/slide/nope", 404),
        ("GET", "/api/slide/%ff%fe", 400),
        ("GET", "/" + "a" * 3000, 400),
        ("POST", "/api/run", 405),
        ("DELETE", "/tiles/{sid}/0/0_0.jpeg", 405),
    ],
)
def test_bad_requests_get_4xx(server, demo, method, path, status):
    sid = open_store(demo / "features.zarr").slides()[0]
    got, body = _raw(server, method, path.replace("{sid}", sid))
    assert got == status, body[:200]
    assert b"root:" not in body and b"task:" not in body  # no /etc/passwd, no config.yaml
    assert "error" in json.loads(body)


def test_requests_for_another_host_name_are_refused(server):
    """DNS rebinding: a page elsewhere points the browser at this port under its own name."""
    host, port = server.httpd.server_address[:2]
    for name, status in [("evil.example", 403), (f"evil.example:{port}", 403),
                         (f"localhost:{port}", 200), (f"127.0.0.1:{port}", 200)]:  # fmt: skip
        c = http.client.HTTPConnection(host, port, timeout=60)
        c.putrequest("GET", "/api/run", skip_host=True)
        c.putheader("Host", name)
        c.endheaders()
        r = c.getresponse()
        body = r.read()
        c.close()
        assert r.status == status, (name, body[:100])


def test_refuses_to_bind_beyond_localhost(demo):
    with pytest.raises(ConfigError, match="--allow-remote"):
        serve(demo / "run", demo / "features.zarr", host="0.0.0.0", port=0)


@pytest.fixture(scope="module")
def survival(tmp_path_factory):
    """Feature bags with no slide file (as import-h5 makes) and a survival run on them."""
    from wsimm.testing import bags_to_store, make_mil_cohort
    from wsimm.train import train

    d = tmp_path_factory.mktemp("view_surv")
    c = make_mil_cohort(30, task="survival", seed=5, feature_dim=16, tiles_per_slide=(20, 40))
    bags_to_store(c.bags, d / "s.zarr", encoder="synthetic")
    c.labels.to_csv(d / "labels.csv", index=False)
    res = train(store=str(d / "s.zarr"), labels=str(d / "labels.csv"), task="survival",
                out=str(d / "surv"), model="abmil", folds=3, epochs=3, quiet=True,
                seed=0)  # fmt: skip
    assert not res.failed
    return d, res


def test_survival_run_without_slide_files_shows_heatmap_and_km(survival):
    d, res = survival
    with serve(d / "surv", d / "s.zarr", port=0) as srv:
        srv.start()
        run = json.loads(_get(srv.url + "api/run")[1])
        assert run["task"] == "survival"
        curves = run["km"]["curves"]
        assert set(curves) <= {"low", "high"} and curves
        assert sum(c["n"] for c in curves.values()) == len(res.predictions)
        for c in curves.values():  # survival curves start at 1 and never rise
            assert c["surv"][0] == 1.0 and np.all(np.diff(c["surv"]) <= 1e-12)
        sid = run["slides"][0]["id"]
        info = json.loads(_get(srv.url + f"api/slide/{sid}")[1])
        assert info["image"] is False and "synthetic bags" in info["image_error"]
        assert info["patient"]["risk_group"] in ("low", "high")
        assert [lay["name"] for lay in info["layers"]] == ["attention", "contribution"]
        assert info["primary"] == "contribution"
        top = info["dz"]["max_level"]
        assert _get(srv.url + f"tiles/{sid}/{top}/0_0.jpeg")[0] == 404
        assert _get(srv.url + f"overlay/{sid}/contribution/{top - 2}/0_0.png")[0] == 200


def test_survival_page_in_headless_chromium(survival, tmp_path):
    """The KM panel draws both risk groups; a slide without its file shows its heatmap on a
    grey ground with a note."""
    d, res = survival
    shots = Path(os.environ.get("WSIMM_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with serve(d / "surv", d / "s.zarr", port=0) as srv:
        srv.start()
        br = _browser()
        try:
            br.get(srv.url)
            _idle(br)
            st = br.execute_script("return window.wsimmViewer.state")
            assert st["layer"] == "contribution" and st["error"] is None
            assert br.execute_script("return document.getElementById('km-section').hidden") is False
            msg = br.execute_script("return document.getElementById('message').textContent")
            assert "slide image unavailable" in msg
            px = np.asarray(br.execute_script(
                "const c = document.getElementById('km');"
                "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);"
            ), np.int64).reshape(-1, 4)  # fmt: skip
            red = (px[:, 0] > 180) & (px[:, 1] < 80) & (px[:, 2] < 110) & (px[:, 3] > 0)
            blue = (px[:, 2] > 200) & (px[:, 0] < 80) & (px[:, 3] > 0)
            groups = set(res.predictions["risk_group"])
            assert red.sum() > 50 or "high" not in groups
            assert blue.sum() > 50 or "low" not in groups
            br.save_screenshot(str(shots / "view-survival.png"))
            assert not [e for e in br.get_log("browser") if e["level"] == "SEVERE"]
        finally:
            br.quit()


def test_store_only_view(demo):
    with serve(None, demo / "features.zarr", port=0) as srv:
        srv.start()
        run = json.loads(_get(srv.url + "api/run")[1])
        assert "task" not in run
        assert [s["id"] for s in run["slides"]] == open_store(demo / "features.zarr").slides()
        sid = run["slides"][0]["id"]
        info = json.loads(_get(srv.url + f"api/slide/{sid}")[1])
        assert info["layers"] == [] and info["image"]
        assert _get(srv.url + f"tiles/{sid}/11/0_0.jpeg")[0] == 200


# -- the page in a real browser ---------------------------------------------------------------


def _browser():
    need = os.environ.get("WSIMM_REQUIRE_BROWSER") == "1"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if need:
            raise
        pytest.skip("selenium is not installed")
    if not (chromium and driver):
        if need:
            pytest.fail("WSIMM_REQUIRE_BROWSER=1 but chromium / chromedriver are not installed")
        pytest.skip("needs Debian's chromium and chromium-driver")
    o = webdriver.ChromeOptions()
    o.binary_location = chromium
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,900",
              "--force-device-scale-factor=1"]:  # fmt: skip
        o.add_argument(a)
    return webdriver.Chrome(options=o, service=Service(driver))


def _wait(d, cond: str, timeout: float = 60.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = d.execute_script(f"return {cond}")
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {cond}")


def _idle(d):
    # two idle checks a frame apart: a redraw scheduled by the last tile has run
    _wait(d, "window.wsimmViewer && window.wsimmViewer.idle()")
    time.sleep(0.1)
    _wait(d, "window.wsimmViewer.idle()")


def _pixel(d, x: float, y: float) -> np.ndarray:
    return np.array(d.execute_script(
        "const c = document.getElementById('view');"
        "return Array.from(c.getContext('2d')"
        ".getImageData(arguments[0], arguments[1], 1, 1).data);",
        round(x), round(y),
    ))  # fmt: skip


def _patch_mean(d, x: float, y: float, r: int) -> np.ndarray:
    data = d.execute_script(
        "const c = document.getElementById('view');"
        "return Array.from(c.getContext('2d').getImageData(arguments[0], arguments[1], "
        "arguments[2], arguments[2]).data);",
        round(x - r),
        round(y - r),
        2 * r,
    )
    return np.asarray(data, np.float64).reshape(-1, 4)[:, :3].mean(0)


def test_viewer_page_in_headless_chromium(server, demo, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    shots = Path(os.environ.get("WSIMM_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    fs = open_store(demo / "features.zarr")
    sid = fs.slides()[1]
    d = _browser()
    try:
        d.get(server.url + f"#slide={sid}")
        _idle(d)
        st = d.execute_script("return window.wsimmViewer.state")
        assert st["slide"] == sid and st["layer"] == "attention" and st["error"] is None
        d.save_screenshot(str(shots / "view-slide.png"))

        # the slide renders: a patch of canvas matches the slide read through read_region
        opacity = d.find_element(By.ID, "opacity")
        opacity.click()
        opacity.send_keys(Keys.HOME)  # opacity 0: the slide alone
        _idle(d)
        assert d.execute_script("return window.wsimmViewer.state.opacity") == 0
        ts = server.app.scores(sid)
        view = server.app.layer(sid, "attention")["view"]
        mask, mds = fs.tissue_mask(sid)
        centres = ts.coords + ts.tile_size0 / 2
        on = mask[(centres[:, 1] / mds).astype(int), (centres[:, 0] / mds).astype(int)] > 0
        best = int(np.flatnonzero(on)[np.argmax(view.values[on])])
        x0, y0 = centres[best]
        sx, sy = d.execute_script("return window.wsimmViewer.toScreen(arguments[0], arguments[1])",
                                  float(x0), float(y0))  # fmt: skip
        scale = d.execute_script("return window.wsimmViewer.state.scale")
        slide = open_slide(fs.slide_attrs(sid)["source"])
        r = 6  # a 12 x 12 CSS px patch around the tile centre
        x_a, y_a = int(x0 - r * scale), int(y0 - r * scale)
        ref = slide.read_region((x_a, y_a), 0, (int(2 * r * scale), int(2 * r * scale)))
        got = _patch_mean(d, sx, sy, r)
        assert np.abs(got - ref.reshape(-1, 3).mean(0)).max() < 12, (got, ref.mean((0, 1)))
        bare = _pixel(d, sx, sy)[:3]

        # opacity 100: the colour map's colour of the most attended tile replaces the slide
        opacity.send_keys(Keys.END)
        _idle(d)
        full = _pixel(d, sx, sy)[:3]
        want = _lut("viridis")[int(np.clip(view.values[best] * 255, 0, 255))]
        assert np.abs(full.astype(int) - want.astype(int)).max() <= 6, (full, want)
        assert np.abs(full.astype(int) - bare.astype(int)).max() > 30
        # opacity 50: halfway between
        d.execute_script(
            "const o = document.getElementById('opacity'); o.value = 50;"
            "o.dispatchEvent(new Event('input'));"
        )
        _idle(d)
        half = _pixel(d, sx, sy)[:3].astype(float)
        assert np.abs(half - (full.astype(float) + bare) / 2).max() <= 4, (half, full, bare)
        d.save_screenshot(str(shots / "view-overlay.png"))

        # zooming in fetches finer levels
        for _ in range(3):
            d.find_element(By.ID, "zoom-in").click()
            _idle(d)
        # clicking a top tile in the list recentres the view on it
        lay = json.loads(_get(server.url + f"api/slide/{sid}")[1])["layers"][0]
        d.find_element(By.ID, "home").click()
        _idle(d)
        d.find_elements(By.CSS_SELECTOR, "#top-tiles li button")[2].click()
        _idle(d)
        st = d.execute_script("return window.wsimmViewer.state")
        b = lay["top"][2]
        assert st["cx"] == pytest.approx(b["x"] + b["size"] / 2)
        assert st["cy"] == pytest.approx(b["y"] + b["size"] / 2)
        assert st["selected"]["x"] == b["x"] and st["selected"]["y"] == b["y"]
        d.save_screenshot(str(shots / "view-top-tile.png"))

        # clicking a tile's outline on the canvas recentres on it too
        d.find_element(By.ID, "home").click()
        _idle(d)
        b = lay["top"][0]
        canvas = d.find_element(By.ID, "view")
        sx, sy = d.execute_script("return window.wsimmViewer.toScreen(arguments[0], arguments[1])",
                                  b["x"] + b["size"] / 2, b["y"] + b["size"] / 2)  # fmt: skip
        size = canvas.size
        ActionChains(d).move_to_element_with_offset(
            canvas, int(sx - size["width"] / 2), int(sy - size["height"] / 2)
        ).click().perform()
        _idle(d)
        st = d.execute_script("return window.wsimmViewer.state")
        assert st["selected"]["x"] == b["x"] and st["selected"]["y"] == b["y"]
        assert st["cx"] == pytest.approx(b["x"] + b["size"] / 2)

        urls = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        levels = {int(m.group(1)) for u in urls if (m := re.search(rf"/tiles/{sid}/(\d+)/", u))}
        assert len(levels) >= 3, levels
        assert any("/overlay/" in u for u in urls)

        # the slide list moves between slides
        other = fs.slides()[2]
        d.find_element(By.CSS_SELECTOR, f'#slides li[data-slide="{other}"]').click()
        _wait(d, f"window.wsimmViewer.state.slide === {json.dumps(other)}")
        _idle(d)
        assert other in d.current_url
        assert (
            d.find_element(By.CSS_SELECTOR, "#slides li.current").get_attribute("data-slide")
            == other
        )
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        slide.close()
    finally:
        d.quit()
