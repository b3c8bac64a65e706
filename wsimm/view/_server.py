"""The viewer's data (:class:`ViewerApp`) and its HTTP server (:func:`serve`).

Every file the server reads is named by the run and the store, never by a request: a slide id in
a URL is looked up among the store's slides (the slide file comes from the store's record of
it, or from ``slides_dir`` by that record's file name), a layer among the run's scores, and the
page's own files from a fixed list. Anything else is a 4xx.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd

from wsimm.errors import ConfigError, DataError, WsimmError
from wsimm.view._tiles import DeepZoom, TileCache, encode_image, read_dz_tile

__all__ = ["ViewerApp", "ViewerServer", "serve"]

_STATIC = Path(__file__).with_name("static")
#: the page's files: URL name -> (file, content type)
_FILES = {
    "index.html": ("index.html", "text/html; charset=utf-8"),
    "viewer.js": ("viewer.js", "text/javascript; charset=utf-8"),
    "viewer.css": ("viewer.css", "text/css; charset=utf-8"),
}


class NotFound(WsimmError):
    """A request for something the viewer does not have (HTTP 404)."""


class BadRequest(WsimmError):
    """A malformed request (HTTP 400)."""


def _num(v: Any) -> Any:
    """A JSON-safe scalar (NaN -> None)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _hex(rgb: np.ndarray) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def _int(s: str, what: str) -> int:
    if not s.isdigit() or len(s) > 9:
        raise BadRequest(f"{what} must be a non-negative integer, got {s[:20]!r}")
    return int(s)


class ViewerApp:
    """What the viewer shows of one run and one store, computed lazily and cached.

    Parameters
    ----------
    run, store
        A run directory from ``wsimm train`` and the feature store it was trained on; without
        a run (``None``) the viewer shows the store's slides without heatmaps.
    slides_dir
        Where slide files are now, when they moved since tiling.
    device
        Where the run's models score tiles (heatmaps are computed per slide on first view).
    cmap
        Colour map of sequential scores (attention, percentiles); signed scores (survival
        contributions) use a diverging map.
    """

    def __init__(
        self,
        run: str | os.PathLike[str] | None,
        store: str | os.PathLike[str],
        *,
        slides_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        cmap: str | None = None,
        tile: int = 256,
        cache_bytes: int = 256 << 20,
        top_k: int = 8,
    ) -> None:
        from wsimm.heatmap import choose_folds
        from wsimm.store import open_store
        from wsimm.train import load_run
        from wsimm.train._run import resolve_device

        device = resolve_device(device) if run is not None else "cpu"
        self.run = load_run(run, device, fusion=True) if run is not None else None
        self.store = open_store(store)
        self.slides_dir = slides_dir
        self.device = device
        self.cmap = cmap
        self.tile = int(tile)
        self.top_k = int(top_k)
        self.cache = TileCache(cache_bytes)
        self.encoder: str | None = None
        self.task: str | None = None
        self.classes: list[str] = []
        self.slide_ids = list(self.store.slides())
        self.predictions = pd.DataFrame()
        if self.run is not None:
            meta = self.run.folds[0].meta
            self.encoder = meta["encoder"]
            self.task = self.run.folds[0].task
            self.classes = [str(c) for c in (meta.get("classes") or [])]
            self.slide_ids = [s for s in self.slide_ids if self.encoder in self.store.encoders(s)]
            pred = self.run.path / "predictions.csv"
            if pred.is_file():
                self.predictions = pd.read_csv(pred)
        if not self.slide_ids:
            raise DataError(
                f"{self.store.path}: no complete slide"
                + (f" with {self.encoder!r} features, the run's encoder; pass the store the run "
                   "was trained on" if self.encoder else "; tile slides into it with wsimm tile")
            )  # fmt: skip
        self._patients = {
            s: choose_folds(self.run, s)[1] if self.run is not None else None
            for s in self.slide_ids
        }
        if "patient_id" in self.predictions:
            self.predictions["patient_id"] = self.predictions["patient_id"].astype(str)
        self._lock = threading.Lock()
        self._slide_locks: dict[str, threading.Lock] = {s: threading.Lock() for s in self.slide_ids}
        self._scores: dict[str, Any] = {}
        self._layers: dict[str, dict[str, Any]] = {}
        self._slides: dict[str, Any] = {}
        self._geometry: dict[str, DeepZoom] = {}
        self._slide_errors: dict[str, str] = {}

    # -- lookups ------------------------------------------------------------------------------
    def check_slide(self, slide_id: str) -> str:
        if slide_id not in self._slide_locks:
            raise NotFound(f"no slide {slide_id[:80]!r} in this run's store")
        return slide_id

    def geometry(self, slide_id: str) -> DeepZoom:
        """The slide's deep-zoom pyramid (its store record read once)."""
        dz = self._geometry.get(self.check_slide(slide_id))
        if dz is None:
            w, h = (int(v) for v in self.store.slide_attrs(slide_id)["level0_dims"])
            dz = self._geometry[slide_id] = DeepZoom(w, h, self.tile)
        return dz

    def scores(self, slide_id: str) -> Any:
        """The slide's :class:`~wsimm.heatmap.TileScores` (computed once; ``None`` without a
        run)."""
        from wsimm.heatmap import tile_scores

        self.check_slide(slide_id)
        if self.run is None:
            self._layers.setdefault(slide_id, {})
            return None
        with self._slide_locks[slide_id]:
            if slide_id not in self._scores:
                ts = tile_scores(self.run, self.store, slide_id, device=self.device)
                self._scores[slide_id] = ts
                self._layers[slide_id] = self._make_layers(ts)
            return self._scores[slide_id]

    def _make_layers(self, ts: Any) -> dict[str, Any]:
        from wsimm.heatmap._export import _field, _view
        from wsimm.heatmap._render import _lut

        out = {}
        for name in ts.scores:
            v = _view(ts, name, "auto", 0.0, None if name == "contribution" else self.cmap)
            order = np.argsort(-v.values, kind="stable")

            def boxes(idx: np.ndarray, ts: Any = ts, v: Any = v) -> list[dict[str, Any]]:
                return [
                    {
                        "x": int(ts.coords[i, 0]),
                        "y": int(ts.coords[i, 1]),
                        "size": float(ts.tile_size0),
                        "value": _num(float(v.values[i])),
                        "raw": _num(float(ts.scores[v.name][i])),
                    }
                    for i in idx
                ]

            k = min(self.top_k, len(order))
            lut = _lut(v.cmap)
            out[name] = {
                "view": v,
                "field": _field(ts, v),
                "info": {
                    "name": name,
                    "label": v.label,
                    "vmin": v.vmin,
                    "vmax": v.vmax,
                    "cmap": v.cmap,
                    "colors": [_hex(rgb) for rgb in lut[::8]] + [_hex(lut[-1])],
                    "top": boxes(order[:k]),
                    "bottom": boxes(order[::-1][:k]),
                },
            }
        return out

    def layer(self, slide_id: str, name: str) -> dict[str, Any]:
        self.scores(slide_id)
        layers = self._layers[slide_id]
        if name not in layers:
            raise NotFound(f"no layer {name[:40]!r} for slide {slide_id}")
        return layers[name]

    def slide(self, slide_id: str) -> Any:
        """The slide's reader, opened once; :class:`NotFound` when its file is missing."""
        from wsimm.pipeline._tile import locate_source
        from wsimm.slide import open_slide

        self.check_slide(slide_id)
        with self._lock:
            if slide_id in self._slides:
                return self._slides[slide_id]
            if slide_id in self._slide_errors:
                raise NotFound(self._slide_errors[slide_id])
            try:
                a = self.store.slide_attrs(slide_id)
                self._slides[slide_id] = open_slide(locate_source(a, slide_id, self.slides_dir))
            except WsimmError as e:
                self._slide_errors[slide_id] = str(e)
                raise NotFound(str(e)) from None
            return self._slides[slide_id]

    # -- JSON -----------------------------------------------------------------------------------
    def _patient_rows(self, pid: str | None) -> pd.DataFrame:
        p = self.predictions
        if pid is None or "patient_id" not in p:
            return p.iloc[:0]
        return p[p["patient_id"] == str(pid)]

    def _label_name(self, v: Any) -> Any:
        if self.task == "grade" and v is not None and self.classes:
            try:
                return self.classes[int(v)]
            except (ValueError, IndexError, TypeError):
                return v
        return v

    def run_info(self) -> dict[str, Any]:
        slides = []
        for s in self.slide_ids:
            pid = self._patients[s]
            rows = self._patient_rows(pid)
            item: dict[str, Any] = {"id": s, "patient_id": pid}
            if len(rows):
                r = rows.iloc[0]
                if self.task == "grade":
                    item["label"] = self._label_name(_num(r.get("label")))
                    item["pred"] = self._label_name(_num(r.get("pred")))
                else:
                    item["risk"] = _num(r.get("risk"))
                    item["risk_group"] = r.get("risk_group")
            slides.append(item)
        out: dict[str, Any] = {"store": Path(str(self.store.path)).name, "slides": slides}
        if self.run is None:
            return out
        out.update(
            run=self.run.path.name,
            task=self.task,
            model=self.run.config.model,
            fusion=self.run.config.fusion,
            encoder=self.encoder,
            folds=len(self.run.folds),
        )
        metrics = self.run.path / "metrics.json"
        if metrics.is_file():
            out["metrics"] = json.loads(metrics.read_text()).get("mean", {})
        if self.task == "survival":
            out["km"] = self.km()
        return out

    def km(self) -> dict[str, Any]:
        """Kaplan-Meier curves of the run's out-of-fold risk groups (as ``km.png`` draws)."""
        from wsimm.survival import kaplan_meier

        p = self.predictions
        if not {"time", "event", "risk_group"} <= set(p.columns):
            return {}
        curves = {}
        for g in ("low", "high"):
            part = p[p["risk_group"] == g]
            if len(part):
                t, s = kaplan_meier(part["time"].to_numpy(float), part["event"].to_numpy(int))
                curves[g] = {"time": [0.0, *map(float, t)], "surv": [1.0, *map(float, s)],
                             "n": len(part)}  # fmt: skip
        return {"curves": curves, "t_max": float(p["time"].max()) if len(p) else 1.0}

    def slide_info(self, slide_id: str) -> dict[str, Any]:
        ts = self.scores(slide_id)
        a = self.store.slide_attrs(slide_id)
        try:
            self.slide(slide_id)
            image, image_error = True, None
        except NotFound as e:
            image, image_error = False, str(e)
        pid = ts.patient_id if ts is not None else None
        rows = self._patient_rows(pid)
        patient: dict[str, Any] = {"patient_id": pid}
        if len(rows):
            r = rows.iloc[0]
            for c in rows.columns:
                if c in ("patient_id",):
                    continue
                v = _num(r[c])
                patient[c] = self._label_name(v) if c in ("label", "pred") else v
        expl = self._explanations(pid, patient.get("fold"))
        return {
            "id": slide_id,
            "dz": self.geometry(slide_id).to_dict(),
            "mpp": float(a["mpp"]),
            "tile_size0": float(a["tile_size0"]),
            "n_tiles": int(self.store.coords(slide_id).shape[0]),
            "image": image,
            "image_error": image_error,
            "model": ts.model if ts is not None else None,
            "folds": ts.folds if ts is not None else [],
            "prediction": {k: _num(v) for k, v in ts.prediction.items()} if ts is not None else {},
            "primary": ts.primary if ts is not None else None,
            "patient": patient,
            "explanations": expl,
            "layers": [lay["info"] for lay in self._layers[slide_id].values()],
        }

    def _explanations(self, pid: str | None, fold: Any) -> dict[str, Any] | None:
        if self.run is None or pid is None or fold is None:
            return None
        f = self.run.path / f"fold_{int(fold)}" / "explanations.json"
        if not f.is_file():
            return None
        return json.loads(f.read_text()).get(str(pid))

    # -- tiles --------------------------------------------------------------------------------
    def slide_tile(self, slide_id: str, level: int, col: int, row: int) -> bytes:
        key = ("slide", slide_id, level, col, row)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        dz = self.geometry(slide_id)
        try:
            dz.tile_box(level, col, row)
        except ConfigError as e:
            raise NotFound(str(e)) from None
        sl = self.slide(slide_id)
        with self._slide_locks[slide_id]:
            px = read_dz_tile(sl, dz, level, col, row)
        data = encode_image(px, "jpeg")
        self.cache.put(key, data)
        return data

    def overlay_tile(self, slide_id: str, layer: str, level: int, col: int, row: int) -> bytes:
        from wsimm.heatmap import colorize

        key = ("overlay", slide_id, layer, level, col, row)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        dz = self.geometry(slide_id)
        try:
            x0, y0, w, h, ds = dz.tile_box(level, col, row)
        except ConfigError as e:
            raise NotFound(str(e)) from None
        lay = self.layer(slide_id, layer)
        v = lay["view"]
        values = lay["field"].region(x0, y0, w, h, ds)
        data = encode_image(colorize(values, vmin=v.vmin, vmax=v.vmax, cmap=v.cmap), "png")
        self.cache.put(key, data)
        return data

    def close(self) -> None:
        with self._lock:
            for s in self._slides.values():
                s.close()
            self._slides.clear()


# -- HTTP ---------------------------------------------------------------------------------------


class Forbidden(WsimmError):
    """A request the viewer refuses to answer (HTTP 403)."""


def _handler(app: ViewerApp, log: bool, hosts: set[str] | None) -> type[BaseHTTPRequestHandler]:
    """The request handler; ``hosts``: the ``Host`` names answered (``None``: any). A page
    elsewhere that points a browser's requests at this port through a name it controls (DNS
    rebinding) sends its own name and is refused."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "wsimm-view"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            if log:
                super().log_message(format, *args)

        def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, msg: str) -> None:
            body = json.dumps({"error": msg}).encode()
            self._send(status, body, "application/json")

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_POST(self) -> None:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, "the viewer only answers GET")

        do_PUT = do_DELETE = do_PATCH = do_POST

        def do_GET(self) -> None:
            try:
                self._check_host()
                status, body, ctype, cache = self._route()
            except Forbidden as e:
                return self._error(HTTPStatus.FORBIDDEN, str(e))
            except (NotFound, DataError) as e:
                return self._error(HTTPStatus.NOT_FOUND, str(e))
            except (BadRequest, ConfigError) as e:
                return self._error(HTTPStatus.BAD_REQUEST, str(e))
            except Exception as e:  # a bug: answer, and keep serving
                self.log_error("%s", repr(e))
                return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")
            self._send(status, body, ctype, cache)

        def _check_host(self) -> None:
            if hosts is None:
                return
            name = (self.headers.get("Host") or "").strip().lower()
            if name.startswith("["):  # [::1]:port
                name = name[: name.find("]") + 1]
            else:
                name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
            if name not in hosts:
                raise Forbidden(f"Host {name[:60]!r} is not this viewer's address")

        def _route(self) -> tuple[int, bytes, str, bool]:
            raw = urlsplit(self.path).path
            if len(raw) > 2048:
                raise BadRequest("URL too long")
            # split before decoding: an encoded '/' stays inside its segment
            try:
                parts = [unquote(p, errors="strict") for p in raw.split("/")[1:]]
            except UnicodeDecodeError:
                raise BadRequest("the URL is not UTF-8") from None
            if any(p in (".", "..") or "\x00" in p for p in parts):
                raise BadRequest("path segments '.' and '..' are not allowed")
            if parts == ["favicon.ico"]:
                return 204, b"", "image/x-icon", True
            if parts in ([""], ["index.html"]):
                return self._file("index.html")
            if len(parts) == 2 and parts[0] == "static":
                return self._file(parts[1])
            if parts == ["api", "run"]:
                return 200, json.dumps(app.run_info()).encode(), "application/json", False
            if len(parts) == 3 and parts[:2] == ["api", "slide"]:
                info = app.slide_info(app.check_slide(parts[2]))
                return 200, json.dumps(info).encode(), "application/json", False
            if len(parts) == 4 and parts[0] == "tiles":
                sid = app.check_slide(parts[1])
                level, col, row = self._tile_address(parts[2], parts[3], ".jpeg")
                return 200, app.slide_tile(sid, level, col, row), "image/jpeg", True
            if len(parts) == 5 and parts[0] == "overlay":
                sid = app.check_slide(parts[1])
                level, col, row = self._tile_address(parts[3], parts[4], ".png")
                return 200, app.overlay_tile(sid, parts[2], level, col, row), "image/png", True
            raise NotFound(f"no such page: {raw[:100]}")

        @staticmethod
        def _tile_address(level: str, name: str, ext: str) -> tuple[int, int, int]:
            if not name.endswith(ext) or name.count("_") != 1:
                raise BadRequest(f"a tile is COL_ROW{ext}, got {name[:40]!r}")
            col, row = name[: -len(ext)].split("_")
            return _int(level, "level"), _int(col, "column"), _int(row, "row")

        @staticmethod
        def _file(name: str) -> tuple[int, bytes, str, bool]:
            if name not in _FILES:
                raise NotFound(f"no such file: {name[:60]}")
            fname, ctype = _FILES[name]
            return 200, (_STATIC / fname).read_bytes(), ctype, False

    return Handler


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ViewerServer:
    """A running viewer: :attr:`url`, :meth:`start` (in a thread), :meth:`serve_forever`,
    :meth:`close`."""

    def __init__(self, app: ViewerApp, httpd: ThreadingHTTPServer) -> None:
        self.app = app
        self.httpd = httpd
        host, port = httpd.server_address[:2]
        self.url = f"http://{host if ':' not in str(host) else f'[{host}]'}:{port}/"
        self._thread: threading.Thread | None = None

    def start(self) -> ViewerServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
        self.httpd.server_close()
        self.app.close()

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    run: str | os.PathLike[str] | None,
    store: str | os.PathLike[str],
    *,
    slides_dir: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    allow_remote: bool = False,
    device: str = "auto",
    cmap: str | None = None,
    log: bool = False,
) -> ViewerServer:
    """Start the viewer's server (not yet serving: call :meth:`ViewerServer.start` or
    :meth:`ViewerServer.serve_forever`). ``port=0`` picks a free port. A host other than a
    loopback address needs ``allow_remote=True``: the viewer has no login and shows patient
    data."""
    if not _is_loopback(host) and not allow_remote:
        raise ConfigError(
            f"--host {host} would serve patient data beyond this machine; pass --allow-remote "
            "to do it anyway, or use 127.0.0.1 with an SSH tunnel"
        )
    app = ViewerApp(run, store, slides_dir=slides_dir, device=device, cmap=cmap)
    cls = ThreadingHTTPServer
    if ":" in host:
        cls = type("V6Server", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    hosts = None if allow_remote else {"localhost", "127.0.0.1", "[::1]", host.lower()}
    try:
        httpd = cls((host, int(port)), _handler(app, log, hosts))
    except OSError as e:
        app.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror}); pick another --port"
        ) from None
    httpd.daemon_threads = True
    return ViewerServer(app, httpd)
