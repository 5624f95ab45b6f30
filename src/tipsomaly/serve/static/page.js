// tipsomaly inspection page: plain JavaScript, no build step, nothing loaded from elsewhere.
// Uploads go to POST /v1/predict with return_map=png (and the ROI mask, if one is chosen); each
// card shows the image, the heat map (drawn here from the grey map, only where map >= the
// display threshold) with the defect boxes on it, the scores and the list of defects.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, cards: [], sliderTouched: false };

function token() {
  return $("token").value || sessionStorage.getItem("tipsomaly-token") || "";
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

function detail(body, status) {
  if (!body) return "HTTP " + status;
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) {
    return body.detail.map((d) => (d.loc || []).slice(-1)[0] + ": " + d.msg).join("; ");
  }
  return "HTTP " + status;
}

async function fetchJSON(url, options) {
  const res = await fetch(url, options);
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  return { res, body };
}

// -- server state --------------------------------------------------------------------------
async function loadInfo() {
  const health = await fetchJSON("/health").catch(() => null);
  if (!health) { $("server").textContent = "server unreachable"; return; }
  if (health.res.status !== 200) {
    $("server").textContent = health.body && health.body.status === "failed"
      ? "model failed to load: " + health.body.error : "model loading…";
    setTimeout(loadInfo, 2000);
    return;
  }
  const { res, body } = await fetchJSON("/v1/info", { headers: authHeaders() });
  if (res.status === 401) {
    $("token-field").hidden = false;
    $("server").textContent = "ready (enter the token to see the model)";
    return;
  }
  if (!res.ok) { $("server").textContent = detail(body, res.status); return; }
  state.info = body;
  const profiles = body.profiles.map((p) => p.class_name).filter(Boolean);
  $("server").textContent = [
    body.model, body.image_size + " px", body.engine, body.dtype, body.device,
    body.prompt_type + " prompts",
    body.tiling ? "tiles of " + body.tiling.tile + " px" : null,
    body.roi ? "ROI " + body.roi.split(/[\\/]/).pop() : null,
    profiles.length ? "profiles: " + profiles.join(", ") : "zero-shot",
    "v" + body.version,
  ].filter(Boolean).join(" · ");
  $("roi-hint").textContent = body.roi
    ? "optional: replaces the server's ROI" : "optional: white = inspect";
  $("token-field").hidden = !body.auth;
  const list = $("classes");
  list.replaceChildren();
  for (const name of body.classes || []) {
    const o = document.createElement("option");
    o.value = name;
    list.appendChild(o);
  }
  if (profiles.length === 1 && !$("class-name").value) $("class-name").value = profiles[0];
  $("class-hint").textContent = body.classes
    ? "one of: " + body.classes.join(", ") : "what the images show (any name)";
  if (typeof initReview === "function") initReview(body); // review.js: with --db
}

// -- drawing -------------------------------------------------------------------------------
function jet(v) { // the server's ramp: blue 0, green .5, red 1
  const c = (k) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - k))));
  return [c(3), c(2), c(1)];
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const im = new Image();
    im.onload = () => resolve(im);
    im.onerror = () => reject(new Error("cannot display the image"));
    im.src = src;
  });
}

function pixels(im, w, h) {
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const g = c.getContext("2d");
  g.drawImage(im, 0, 0, w, h);
  return g.getImageData(0, 0, w, h);
}

function svg(layer, tag, attributes) { // an element of the SVG namespace, as layer's
  const el = document.createElementNS(layer.namespaceURI, tag);
  for (const [k, v] of Object.entries(attributes)) el.setAttribute(k, String(v));
  return el;
}

// the defect boxes over the heat map, in the image's pixels (vector: sharp at any zoom), white
// outlined in black as on predict's overlays, labelled "#id peak"
function drawBoxes(card, r) {
  const layer = card.el.querySelector("svg.boxes");
  layer.replaceChildren();
  const [h, w] = r.size;
  layer.setAttribute("viewBox", "0 0 " + w + " " + h);
  // one screen pixel in image pixels (the figure is 320 px wide, or card.width)
  const unit = w / (card.width || 320);
  for (const d of r.defects || []) {
    const [x0, y0, x1, y1] = d.bbox;
    const box = { x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none",
                  "vector-effect": "non-scaling-stroke" };
    const g = svg(layer, "g", { "data-id": d.id, "data-bbox": d.bbox.join(",") });
    g.appendChild(svg(layer, "rect", { ...box, stroke: "#000", "stroke-width": 4 }));
    g.appendChild(svg(layer, "rect", { ...box, stroke: "#fff", "stroke-width": 2 }));
    const right = x0 + 52 * unit > w; // a label that would leave the image ends at the box's end
    const label = svg(layer, "text", {
      x: right ? x1 : x0, "text-anchor": right ? "end" : "start",
      y: Math.max(12 * unit, y0 - 3 * unit), "font-size": 12 * unit,
      "font-weight": 600, fill: "#fff", stroke: "#000", "stroke-width": 3 * unit,
      "paint-order": "stroke",
    });
    label.textContent = "#" + d.id + " " + d.peak.toFixed(2);
    g.appendChild(label);
    layer.appendChild(g);
  }
}

function listDefects(card, r) {
  const count = card.el.querySelector(".defect-count");
  const list = card.el.querySelector(".defects");
  list.replaceChildren();
  if (r.defects === null) {
    count.textContent = "none looked for (no pixel threshold: serve a profile or --threshold)";
    count.className = "defect-count none";
    return;
  }
  count.textContent = r.defects.length + " region" + (r.defects.length === 1 ? "" : "s") +
    " of map ≥ " + r.pixel_threshold.toFixed(4);
  count.className = "defect-count" + (r.defects.length ? " found" : "");
  for (const d of r.defects) {
    const li = document.createElement("li");
    li.dataset.bbox = d.bbox.join(",");
    const [x0, y0, x1, y1] = d.bbox;
    const area = d.area_mm2 === null ? d.area_px + " px" : d.area_px + " px, " +
      d.area_mm2.toPrecision(4) + " mm²";
    li.textContent = "#" + d.id + "  box " + x0 + "," + y0 + " – " + x1 + "," + y1 +
      " (" + (x1 - x0) + "×" + (y1 - y0) + ")  ·  " + area + "  ·  peak " +
      d.peak.toFixed(3) + "  ·  mean " + d.mean.toFixed(3);
    list.appendChild(li);
  }
}

function draw(card) {
  const { canvas, base, map } = card;
  if (!base || !map) return;
  const t = parseFloat($("display").value);
  // colours as the server's overlay: a profile's pixel threshold green, twice it red
  const top = card.pixelThreshold > 0 ? 2 * card.pixelThreshold : 1;
  const out = new ImageData(new Uint8ClampedArray(base.data), base.width, base.height);
  let above = 0;
  for (let i = 0; i < out.data.length; i += 4) {
    const v = map.data[i] / 255;
    if (v < t) continue;
    above += 1;
    const [r, g, b] = jet(Math.min(1, v / top));
    out.data[i] = Math.round(0.5 * out.data[i] + 0.5 * r);
    out.data[i + 1] = Math.round(0.5 * out.data[i + 1] + 0.5 * g);
    out.data[i + 2] = Math.round(0.5 * out.data[i + 2] + 0.5 * b);
  }
  canvas.getContext("2d").putImageData(out, 0, 0);
  const share = (100 * above) / (out.data.length / 4);
  card.el.querySelector(".area").textContent = share.toFixed(1) + " % of the image";
  card.el.querySelector(".overlay-caption").textContent =
    "heat map where map ≥ " + t.toFixed(2);
}

function redraw() {
  $("display-value").textContent = parseFloat($("display").value).toFixed(2);
  for (const card of state.cards) draw(card);
}

// -- scoring -------------------------------------------------------------------------------
function newCard(file, group) {
  const el = $("card").content.firstElementChild.cloneNode(true);
  el.querySelector(".name").textContent = file.name;
  const url = URL.createObjectURL(file);
  el.querySelector(".original").src = url;
  group.appendChild(el);
  return { el, url, canvas: el.querySelector(".overlay"), base: null, map: null,
           pixelThreshold: null };
}

async function fill(card, r) {
  const el = card.el;
  el.querySelector(".mode").textContent = r.class_name + " · " + r.mode;
  el.querySelector(".timing").textContent =
    r.forward_ms.toFixed(0) + " ms forward (" + r.batch_images + " image" +
    (r.batch_images === 1 ? "" : "s") + " in it), " + r.queue_ms.toFixed(0) + " ms queued";
  if (r.error) {
    el.dataset.state = "error";
    el.querySelector(".score").textContent = r.error;
    return;
  }
  const score = el.querySelector(".score");
  score.textContent = r.image_score.toFixed(6);
  score.dataset.score = String(r.image_score);
  el.querySelector(".cls").textContent =
    r.score_cls1.toFixed(4) + " · " + r.score_cls2.toFixed(4);
  el.querySelector(".inspected").textContent = [
    { request: "inside this request's ROI mask", server: "inside the server's ROI" }[r.roi] ||
      "the whole image",
    r.tiles ? r.tiles + " tile" + (r.tiles === 1 ? "" : "s") : null,
    ...r.notes,
  ].filter(Boolean).join(" · ");
  listDefects(card, r);
  const d = el.querySelector(".decision");
  if (r.is_anomalous === null) {
    d.textContent = "no threshold: enter one or serve a profile";
    d.className = "decision none";
  } else {
    d.textContent = (r.is_anomalous ? "ANOMALOUS" : "normal") + " (score " +
      (r.is_anomalous ? "≥ " : "< ") + r.threshold.toFixed(4) + ", " + r.threshold_source + ")";
    d.className = "decision " + (r.is_anomalous ? "anomalous" : "normal");
  }
  if (r.pixel_threshold !== null && !state.sliderTouched) {
    $("display").value = r.pixel_threshold.toFixed(2);
    $("display-value").textContent = parseFloat($("display").value).toFixed(2);
  }
  const [im, grey] = await Promise.all([
    loadImage(card.url), loadImage("data:image/png;base64," + r.map_png),
  ]);
  // drawn at the image's size, at most 1024 px on its long side (the page shows 320 px)
  const scale = Math.min(1, 1024 / Math.max(r.size[0], r.size[1]));
  const w = Math.max(1, Math.round(r.size[1] * scale));
  const h = Math.max(1, Math.round(r.size[0] * scale));
  card.pixelThreshold = r.pixel_threshold;
  card.canvas.width = w;
  card.canvas.height = h;
  card.base = pixels(im, w, h);
  card.map = pixels(grey, w, h);
  draw(card);
  drawBoxes(card, r);
  el.dataset.state = "done";
}

async function score(event) {
  event.preventDefault();
  const files = Array.from($("files").files);
  if (!files.length) { say("choose one or more images", true); return; }
  if (token()) sessionStorage.setItem("tipsomaly-token", token());
  const limit = state.info ? state.info.limits.max_files : 16;
  $("score").disabled = true;
  say("scoring " + files.length + " image" + (files.length === 1 ? "" : "s") + "…");
  try {
    for (let start = 0; start < files.length; start += limit) {
      const part = files.slice(start, start + limit);
      const form = new FormData();
      for (const f of part) form.append("file", f, f.name);
      if ($("class-name").value) form.append("class_name", $("class-name").value);
      if ($("threshold").value !== "") form.append("threshold", $("threshold").value);
      const roi = $("roi").files[0];
      if (roi) form.append("roi", roi, roi.name);
      form.append("return_map", "png");
      const { res, body } = await fetchJSON("/v1/predict", {
        method: "POST", body: form, headers: authHeaders(),
      });
      if (res.status === 401) $("token-field").hidden = false;
      if (!res.ok) {
        const retry = res.headers.get("Retry-After");
        say(detail(body, res.status) + (retry ? " (retry in " + retry + " s)" : ""), true);
        return;
      }
      const group = document.createElement("div"); // the newest request on top, in order
      $("results").prepend(group);
      const cards = part.map((f) => newCard(f, group));
      state.cards.push(...cards);
      await Promise.all(cards.map((c, i) => fill(c, body.results[i])));
      say("scored in " + body.timing.total_ms.toFixed(0) + " ms");
    }
  } catch (err) {
    say(String(err), true);
  } finally {
    $("score").disabled = false;
  }
}

// -- wiring ----------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("form").addEventListener("submit", score);
  $("display").addEventListener("input", () => { state.sliderTouched = true; redraw(); });
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("tipsomaly-token", $("token").value);
    loadInfo();
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    $("files").files = e.dataTransfer.files;
  });
  loadInfo();
});
