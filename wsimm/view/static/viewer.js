// wsimm view: a small canvas deep-zoom viewer for a run's slides and heatmaps.
// No dependencies; everything it loads comes from the wsimm server that served this page.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("view");
  const ctx = canvas.getContext("2d");
  const off = document.createElement("canvas"); // the overlay, composited at one opacity
  const octx = off.getContext("2d");
  const S = {
    run: null, info: null, slide: null, layer: null, opacity: 0.5, outlines: true,
    cx: 0, cy: 0, scale: 1, dpr: window.devicePixelRatio || 1, selected: null,
    ready: false, draws: 0, error: null,
  };
  const cache = new Map(); // url -> {img, ok, failed}
  const MAX_CACHED = 1500;
  let pending = 0;
  let queued = false;

  // ---- helpers -----------------------------------------------------------------------------
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toPrecision(3);
  }
  async function getJSON(url) {
    const r = await fetch(url);
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }
  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "onclick") e.addEventListener("click", v);
      else if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }

  // ---- geometry: scale = level-0 pixels per CSS pixel, (cx, cy) = level-0 centre ------------
  const viewW = () => canvas.width / S.dpr;
  const viewH = () => canvas.height / S.dpr;
  const toScreen = (x, y) => [(x - S.cx) / S.scale + viewW() / 2, (y - S.cy) / S.scale + viewH() / 2];
  const toLevel0 = (sx, sy) => [S.cx + (sx - viewW() / 2) * S.scale, S.cy + (sy - viewH() / 2) * S.scale];
  function scaleLimits() {
    const dz = S.info.dz;
    return [1 / 8, Math.max(dz.width / viewW(), dz.height / viewH()) * 4];
  }
  function setScale(s) {
    const [lo, hi] = scaleLimits();
    S.scale = clamp(s, lo, hi);
  }
  function clampCentre() {
    const dz = S.info.dz;
    S.cx = clamp(S.cx, 0, dz.width);
    S.cy = clamp(S.cy, 0, dz.height);
  }
  function home() {
    const dz = S.info.dz;
    setScale(Math.max(dz.width / viewW(), dz.height / viewH()) * 1.05);
    S.cx = dz.width / 2;
    S.cy = dz.height / 2;
    schedule();
  }
  function zoomAt(factor, sx, sy) {
    const [x, y] = toLevel0(sx, sy);
    setScale(S.scale / factor);
    S.cx = x - (sx - viewW() / 2) * S.scale;
    S.cy = y - (sy - viewH() / 2) * S.scale;
    clampCentre();
    schedule();
  }
  function goTo(box) {
    S.selected = box;
    S.cx = box.x + box.size / 2;
    S.cy = box.y + box.size / 2;
    setScale((box.size * 4) / Math.min(viewW(), viewH()));
    schedule();
  }
  // the pyramid level whose pixels are closest to, and not coarser than, the screen's
  function levelFor() {
    const dz = S.info.dz;
    const ds = S.scale / S.dpr;
    const k = Math.max(0, Math.floor(Math.log2(Math.max(ds, 1)) + 1e-9));
    return Math.max(0, dz.max_level - k);
  }
  function grid(L) {
    const dz = S.info.dz;
    const ds = 2 ** (dz.max_level - L);
    const lw = Math.ceil(dz.width / ds), lh = Math.ceil(dz.height / ds);
    return { ds, cols: Math.ceil(lw / dz.tile), rows: Math.ceil(lh / dz.tile) };
  }

  // ---- tiles ---------------------------------------------------------------------------------
  function url(kind, L, c, r) {
    const sid = encodeURIComponent(S.slide);
    return kind === "slide"
      ? `/tiles/${sid}/${L}/${c}_${r}.jpeg`
      : `/overlay/${sid}/${encodeURIComponent(S.layer)}/${L}/${c}_${r}.png`;
  }
  function load(u) {
    let e = cache.get(u);
    if (e) return e;
    const img = new Image();
    e = { img, ok: false, failed: false };
    pending += 1;
    img.onload = () => { e.ok = true; pending -= 1; schedule(); };
    img.onerror = () => { e.failed = true; pending -= 1; schedule(); };
    img.src = u;
    cache.set(u, e);
    if (cache.size > MAX_CACHED) {
      for (const [k, v] of cache) {
        if (v.ok || v.failed) { cache.delete(k); break; }
      }
    }
    return e;
  }
  // draw the visible tiles of level L onto c; request missing ones when asked
  function drawLevel(c, kind, L, request) {
    const T = S.info.dz.tile;
    const g = grid(L);
    const [x0, y0] = toLevel0(0, 0);
    const [x1, y1] = toLevel0(viewW(), viewH());
    const span = T * g.ds;
    const c0 = clamp(Math.floor(x0 / span), 0, g.cols - 1), c1 = clamp(Math.floor(x1 / span), 0, g.cols - 1);
    const r0 = clamp(Math.floor(y0 / span), 0, g.rows - 1), r1 = clamp(Math.floor(y1 / span), 0, g.rows - 1);
    for (let r = r0; r <= r1; r++) {
      for (let k = c0; k <= c1; k++) {
        const u = url(kind, L, k, r);
        const e = request ? load(u) : cache.get(u);
        if (!e || !e.ok) continue;
        const [sx, sy] = toScreen(k * span, r * span);
        const w = (e.img.naturalWidth * g.ds) / S.scale, h = (e.img.naturalHeight * g.ds) / S.scale;
        c.drawImage(e.img, sx * S.dpr, sy * S.dpr, w * S.dpr, h * S.dpr);
      }
    }
  }
  function drawPyramid(c, kind) {
    const dz = S.info.dz;
    const L = levelFor();
    // a backdrop level that holds the whole slide in a few tiles, then the levels above it
    const Lb = Math.max(0, Math.min(L, dz.max_level - Math.ceil(Math.log2(Math.max(dz.width, dz.height) / 512))));
    drawLevel(c, kind, Lb, true);
    if (L - 1 > Lb) drawLevel(c, kind, L - 1, false);
    if (L > Lb) drawLevel(c, kind, L, true);
  }

  // ---- drawing -------------------------------------------------------------------------------
  function schedule() {
    if (!queued) {
      queued = true;
      requestAnimationFrame(draw);
    }
  }
  function draw() {
    queued = false;
    if (!S.info) return;
    S.draws += 1;
    const W = canvas.width, H = canvas.height;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.globalAlpha = 1;
    ctx.fillStyle = S.info.image ? "#ffffff" : "#e4e4e4";
    ctx.fillRect(0, 0, W, H);
    if (S.info.image) drawPyramid(ctx, "slide");
    if (S.layer && S.opacity > 0) {
      if (off.width !== W || off.height !== H) { off.width = W; off.height = H; }
      octx.clearRect(0, 0, W, H);
      drawPyramid(octx, "overlay");
      ctx.globalAlpha = S.opacity;
      ctx.drawImage(off, 0, 0);
      ctx.globalAlpha = 1;
    }
    // the slide's outline
    const dz = S.info.dz;
    const [ax, ay] = toScreen(0, 0), [bx, by] = toScreen(dz.width, dz.height);
    ctx.strokeStyle = "#999";
    ctx.lineWidth = 1;
    ctx.strokeRect(ax * S.dpr, ay * S.dpr, (bx - ax) * S.dpr, (by - ay) * S.dpr);
    if (S.outlines && S.layer) drawOutlines();
    drawScaleBar();
    $("status").textContent =
      `level ${levelFor()}/${dz.max_level} · ${fmt(1 / S.scale)}× · ${pending ? pending + " tiles loading" : "ready"}`;
  }
  function layerInfo() {
    return S.info.layers.find((l) => l.name === S.layer) || null;
  }
  function drawOutlines() {
    const lay = layerInfo();
    if (!lay) return;
    const boxes = [["#e6194b", lay.top], ["#1f78ff", lay.bottom]];
    ctx.font = `${11 * S.dpr}px system-ui, sans-serif`;
    for (const [color, list] of boxes) {
      list.forEach((b, i) => {
        const [sx, sy] = toScreen(b.x, b.y);
        const s = Math.max(b.size / S.scale, 4);
        ctx.lineWidth = 2 * S.dpr;
        ctx.strokeStyle = color;
        ctx.strokeRect(sx * S.dpr, sy * S.dpr, s * S.dpr, s * S.dpr);
        if (s > 14) {
          ctx.fillStyle = color;
          ctx.fillText(String(i + 1), (sx + 2) * S.dpr, (sy - 3) * S.dpr);
        }
      });
    }
    if (S.selected) {
      const b = S.selected;
      const [sx, sy] = toScreen(b.x, b.y);
      ctx.lineWidth = 3 * S.dpr;
      ctx.strokeStyle = "#ffd400";
      ctx.strokeRect(sx * S.dpr - 3, sy * S.dpr - 3, (b.size / S.scale) * S.dpr + 6, (b.size / S.scale) * S.dpr + 6);
    }
  }
  function drawScaleBar() {
    const mpp = S.info.mpp;
    const target = 120 * S.scale * mpp; // µm in about 120 CSS px
    const p = 10 ** Math.floor(Math.log10(target));
    const um = [5, 2, 1].map((m) => m * p).find((v) => v <= target) || p;
    $("scalebar-bar").style.width = `${um / (S.scale * mpp)}px`;
    $("scalebar-label").textContent = um >= 1000 ? `${fmt(um / 1000)} mm` : `${fmt(um)} µm`;
  }
  function hit(sx, sy) {
    const lay = layerInfo();
    if (!lay || !S.outlines) return null;
    const [x, y] = toLevel0(sx, sy);
    const pad = 4 * S.scale; // a few screen pixels of slack around small outlines
    for (const b of [...lay.top, ...lay.bottom]) {
      if (x >= b.x - pad && x <= b.x + b.size + pad && y >= b.y - pad && y <= b.y + b.size + pad) return b;
    }
    return null;
  }

  // ---- panel ---------------------------------------------------------------------------------
  function renderSlides() {
    const ul = $("slides");
    ul.replaceChildren();
    for (const s of S.run.slides) {
      const note = s.pred !== undefined ? `${fmt(s.label)} → ${fmt(s.pred)}`
        : s.risk_group ? `${s.risk_group} risk` : s.patient_id || "";
      const li = el("li", { "data-slide": s.id, onclick: () => loadSlide(s.id) }, el("span", {}, s.id), el("small", {}, note));
      if (s.id === S.slide) li.classList.add("current");
      ul.append(li);
    }
  }
  function renderLayers() {
    const box = $("layers");
    box.replaceChildren();
    const names = [...S.info.layers.map((l) => l.name), null];
    for (const n of names) {
      const input = el("input", { type: "radio", name: "layer", value: n ?? "" });
      input.checked = n === S.layer;
      input.addEventListener("change", () => { S.layer = n; S.selected = null; renderLayer(); schedule(); });
      box.append(el("label", {}, input, ` ${n ?? "none"}`));
    }
  }
  function renderLayer() {
    const lay = layerInfo();
    $("colorbar").hidden = !lay;
    const lists = [["top-tiles", lay ? lay.top : []], ["bottom-tiles", lay ? lay.bottom : []]];
    for (const [id, list] of lists) {
      const ol = $(id);
      ol.replaceChildren();
      list.forEach((b) => {
        const btn = el("button", { onclick: () => goTo(b) }, `${fmt(b.raw)} at ${b.x}, ${b.y}`);
        ol.append(el("li", {}, btn));
      });
    }
    if (!lay) return;
    $("colorbar-label").textContent = lay.label;
    $("colorbar-ramp").style.background = `linear-gradient(to right, ${lay.colors.join(", ")})`;
    const pct = lay.vmin === 0 && lay.vmax === 1 && /percentile/.test(lay.label);
    $("colorbar-min").textContent = pct ? "0" : fmt(lay.vmin);
    $("colorbar-max").textContent = pct ? "100" : fmt(lay.vmax);
  }
  function renderPatient() {
    const t = $("patient");
    t.replaceChildren();
    const row = (k, v) => t.append(el("tr", {}, el("td", {}, k), el("td", {}, fmt(v))));
    const p = S.info.patient || {};
    row("patient", p.patient_id);
    for (const [k, v] of Object.entries(p)) if (k !== "patient_id") row(k, v);
    for (const [k, v] of Object.entries(S.info.prediction || {})) row(`slide ${k}`, v);
    row("model", S.info.model);
    row("scored by fold", S.info.folds.join(", "));
    const ex = S.info.explanations;
    if (ex) {
      for (const [m, w] of Object.entries(ex.modality_weights || {})) row(`weight ${m}`, w);
      for (const [m, w] of Object.entries(ex.linear_terms || {})) row(`linear ${m}`, Array.isArray(w) ? w[0] : w);
      for (const [k, v] of Object.entries(ex)) {
        if (k.startsWith("top_")) row(k.replace("top_", "top "), v.map((kv) => kv[0]).join(", "));
      }
    }
    renderKM();
  }
  function renderKM() {
    const km = S.run.km;
    const sec = $("km-section");
    sec.hidden = !(km && km.curves && Object.keys(km.curves).length);
    if (sec.hidden) return;
    const c = $("km"), g = c.getContext("2d");
    const W = c.width, H = c.height, L = 34, B = 24, R = 8, T = 8;
    g.clearRect(0, 0, W, H);
    g.strokeStyle = "#444";
    g.lineWidth = 1;
    g.strokeRect(L, T, W - L - R, H - T - B);
    g.fillStyle = "#444";
    g.font = "10px system-ui, sans-serif";
    g.fillText("1.0", 6, T + 8);
    g.fillText("0.0", 6, H - B);
    g.fillText("time", W / 2, H - 6);
    const X = (t) => L + (t / (km.t_max || 1)) * (W - L - R);
    const Y = (s) => T + (1 - s) * (H - T - B);
    const p = S.info.patient || {};
    const colors = { low: "#1f78ff", high: "#e6194b" };
    for (const [grp, cv] of Object.entries(km.curves)) {
      g.strokeStyle = colors[grp];
      g.lineWidth = grp === p.risk_group ? 2.5 : 1;
      g.beginPath();
      g.moveTo(X(0), Y(1));
      for (let i = 1; i < cv.time.length; i++) {
        g.lineTo(X(cv.time[i]), Y(cv.surv[i - 1]));
        g.lineTo(X(cv.time[i]), Y(cv.surv[i]));
      }
      g.stroke();
      g.fillStyle = colors[grp];
      g.fillText(`${grp} (n=${cv.n})`, W - R - 70, grp === "low" ? T + 12 : T + 24);
    }
    if (p.time !== undefined && p.risk_group && km.curves[p.risk_group]) {
      const cv = km.curves[p.risk_group];
      let s = 1;
      for (let i = 0; i < cv.time.length; i++) if (cv.time[i] <= p.time) s = cv.surv[i];
      g.fillStyle = "#000";
      g.beginPath();
      g.arc(X(p.time), Y(s), 4, 0, 2 * Math.PI);
      g.fill();
    }
  }

  // ---- loading -------------------------------------------------------------------------------
  async function loadSlide(id) {
    S.ready = false;
    S.slide = id;
    S.selected = null;
    location.hash = `slide=${encodeURIComponent(id)}`;
    renderSlides();
    $("message").hidden = false;
    $("message").textContent = `scoring ${id} …`;
    try {
      S.info = await getJSON(`/api/slide/${encodeURIComponent(id)}`);
    } catch (e) {
      S.error = String(e.message || e);
      $("message").textContent = S.error;
      return;
    }
    const names = S.info.layers.map((l) => l.name);
    if (!names.includes(S.layer)) S.layer = names.includes(S.info.primary) ? S.info.primary : names[0] || null;
    $("message").hidden = S.info.image;
    if (!S.info.image) $("message").textContent = `slide image unavailable (${S.info.image_error}); showing the heatmap only`;
    renderLayers();
    renderLayer();
    renderPatient();
    resize();
    home();
    S.ready = true;
  }
  function resize() {
    const r = canvas.getBoundingClientRect();
    S.dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(r.width * S.dpr));
    canvas.height = Math.max(1, Math.round(r.height * S.dpr));
    if (S.info) schedule();
  }

  // ---- input ---------------------------------------------------------------------------------
  let drag = null;
  canvas.addEventListener("pointerdown", (e) => {
    drag = { x: e.offsetX, y: e.offsetY, moved: 0 };
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag || !S.info) return;
    const dx = e.offsetX - drag.x, dy = e.offsetY - drag.y;
    drag.moved += Math.abs(dx) + Math.abs(dy);
    if (drag.moved > 3) canvas.classList.add("dragging");
    drag.x = e.offsetX;
    drag.y = e.offsetY;
    S.cx -= dx * S.scale;
    S.cy -= dy * S.scale;
    clampCentre();
    schedule();
  });
  canvas.addEventListener("pointerup", (e) => {
    const click = drag && drag.moved <= 3;
    drag = null;
    canvas.classList.remove("dragging");
    if (click && S.info) {
      const b = hit(e.offsetX, e.offsetY);
      if (b) goTo(b);
    }
  });
  canvas.addEventListener("wheel", (e) => {
    if (!S.info) return;
    e.preventDefault();
    zoomAt(Math.pow(1.0015, -e.deltaY), e.offsetX, e.offsetY);
  }, { passive: false });
  canvas.addEventListener("dblclick", (e) => S.info && zoomAt(2, e.offsetX, e.offsetY));
  canvas.addEventListener("keydown", (e) => {
    if (!S.info) return;
    const step = 100 * S.scale;
    const keys = {
      "+": () => zoomAt(1.5, viewW() / 2, viewH() / 2), "=": () => zoomAt(1.5, viewW() / 2, viewH() / 2),
      "-": () => zoomAt(1 / 1.5, viewW() / 2, viewH() / 2), "0": home,
      ArrowLeft: () => { S.cx -= step; }, ArrowRight: () => { S.cx += step; },
      ArrowUp: () => { S.cy -= step; }, ArrowDown: () => { S.cy += step; },
    };
    if (keys[e.key]) { keys[e.key](); clampCentre(); schedule(); e.preventDefault(); }
  });
  $("zoom-in").addEventListener("click", () => S.info && zoomAt(2, viewW() / 2, viewH() / 2));
  $("zoom-out").addEventListener("click", () => S.info && zoomAt(0.5, viewW() / 2, viewH() / 2));
  $("home").addEventListener("click", () => S.info && home());
  const opacity = $("opacity");
  opacity.addEventListener("input", () => {
    S.opacity = Number(opacity.value) / 100;
    $("opacity-value").textContent = `${opacity.value}%`;
    schedule();
  });
  $("outlines").addEventListener("change", (e) => { S.outlines = e.target.checked; schedule(); });
  window.addEventListener("resize", resize);

  async function start() {
    S.opacity = Number(opacity.value) / 100;
    try {
      S.run = await getJSON("/api/run");
    } catch (e) {
      $("message").hidden = false;
      $("message").textContent = S.error = String(e.message || e);
      return;
    }
    $("run-name").textContent = S.run.run
      ? `${S.run.run} · ${S.run.model}${S.run.fusion !== "none" ? ` + ${S.run.fusion} fusion` : ""} · ${S.run.task}`
      : `${S.run.store} (no run: slides only)`;
    const want = decodeURIComponent((location.hash.match(/slide=([^&]+)/) || [])[1] || "");
    const first = S.run.slides.some((s) => s.id === want) ? want : S.run.slides[0].id;
    await loadSlide(first);
  }

  // for tests and for scripting from the browser console
  window.wsimmViewer = {
    state: S, goTo, loadSlide, home, zoomAt, toScreen, toLevel0,
    idle: () => S.ready && pending === 0 && !queued,
  };
  start();
})();
