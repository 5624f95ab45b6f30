// tipsomaly review view (serve --db): recent decisions from GET /v1/records, filtered; each with
// its kept image, the heat map drawn by the server and the defect boxes; buttons store a
// verdict with the reviewer's name (POST /v1/records/ID/review). The drift check of each
// profiled class (GET /v1/monitor) above. Uses page.js's helpers ($, fetchJSON, authHeaders,
// detail, drawBoxes).
"use strict";

const VERDICTS = {
  flagged: [["confirmed_defect", "Confirmed defect"], ["false_alarm", "False alarm (normal)"]],
  passed: [["missed_defect", "Missed defect"], ["confirmed_normal", "Confirmed normal"]],
};
const LABELS = Object.fromEntries([...VERDICTS.flagged, ...VERDICTS.passed]);
const review = { started: false, oldest: null, urls: [] };

function reviewSay(text, isError) {
  const m = $("review-message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

function filters() {
  const q = new URLSearchParams({ limit: "20" });
  const add = (k, v) => { if (v) q.set(k, v); };
  add("outcome", $("f-outcome").value);
  if ($("f-unreviewed").checked) q.set("unreviewed", "true");
  add("class_name", $("f-class").value.trim());
  add("station", $("f-station").value.trim());
  for (const [k, id] of [["since", "f-since"], ["until", "f-until"]]) {
    if ($(id).value) q.set(k, new Date($(id).value).toISOString());
  }
  return q;
}

async function blobURL(url) { // images need the token: fetched, then shown from a blob
  const res = await fetch(url, { headers: authHeaders() });
  if (!res.ok) return null;
  const u = URL.createObjectURL(await res.blob());
  review.urls.push(u);
  return u;
}

function showVerdict(el, r) {
  const v = el.querySelector(".verdict");
  v.textContent = r.verdict ? LABELS[r.verdict] + " — " + r.reviewer : "not reviewed";
  v.className = "verdict" + (r.verdict ? " done" : "");
  el.dataset.verdict = r.verdict || "";
  for (const b of el.querySelectorAll(".verdicts button")) {
    b.classList.toggle("chosen", b.dataset.verdict === r.verdict);
  }
}

async function mark(el, r, verdict) {
  const name = $("reviewer").value.trim();
  if (!name) { reviewSay("enter your name as reviewer first", true); $("reviewer").focus(); return; }
  localStorage.setItem("tipsomaly-reviewer", name);
  const { res, body } = await fetchJSON("/v1/records/" + r.id + "/review", {
    method: "POST",
    headers: { ...authHeaders(), "Content-Type": "application/json" },
    body: JSON.stringify({ verdict, reviewer: name, class: r.class_name }),
  });
  if (!res.ok) { reviewSay(detail(body, res.status), true); return; }
  showVerdict(el, body);
  loadMonitor(); // the review counts in the drift check
  reviewSay("record #" + r.id + ": " + LABELS[verdict] + " (" + name + ")");
}

async function recordCard(r) {
  const el = $("record-card").content.firstElementChild.cloneNode(true);
  el.dataset.id = r.id;
  el.querySelector(".title").textContent = "#" + r.id + " · " + r.time.replace("T", " ")
    .slice(0, 19) + " UTC · " + (r.station || "no station") + " · " + (r.filename || "");
  el.querySelector(".score").textContent = r.image_score === null ? r.error || "—"
    : r.image_score.toFixed(4);
  const d = el.querySelector(".decision");
  if (r.is_anomalous === null) {
    d.textContent = "no decision";
    d.className = "decision none";
  } else {
    d.textContent = (r.is_anomalous ? "ANOMALOUS" : "normal") + " (threshold " +
      r.threshold.toFixed(4) + ")";
    d.className = "decision " + (r.is_anomalous ? "anomalous" : "normal");
  }
  el.querySelector(".mode").textContent = r.class_name + " · " + r.mode;
  el.querySelector(".profile").textContent = r.profile_id
    ? "version " + (r.profile_version ?? "?") + " (" + r.profile_id.slice(0, 10) + ")" : "none";
  const n = (r.defects || []).length;
  const count = el.querySelector(".defect-count");
  count.textContent = r.defects === null ? "none looked for" : n + " region" + (n === 1 ? "" : "s");
  count.className = "defect-count" + (n ? " found" : "");
  const kinds = r.is_anomalous === null ? [] : VERDICTS[r.is_anomalous ? "flagged" : "passed"];
  for (const [verdict, label] of kinds) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.verdict = verdict;
    b.textContent = label;
    b.addEventListener("click", () => mark(el, r, verdict));
    el.querySelector(".verdicts").appendChild(b);
  }
  showVerdict(el, r);
  if (r.image_kept) {
    const [image, heat] = await Promise.all([
      blobURL("/v1/records/" + r.id + "/image"),
      r.map_sha256 ? blobURL("/v1/records/" + r.id + "/overlay") : Promise.resolve(null),
    ]);
    if (image) el.querySelector("img.kept").src = image;
    if (heat) el.querySelector("img.heat").src = heat;
  } else {
    el.querySelector("img.kept").alt = "not kept (serve --keep-images DIR)";
  }
  if (r.width && r.height) {
    drawBoxes({ el, width: 240 }, { size: [r.height, r.width], defects: r.defects });
  }
  el.dataset.state = "done";
  return el;
}

async function loadRecords(more) {
  if (!more) {
    for (const u of review.urls) URL.revokeObjectURL(u);
    review.urls = [];
    $("records").replaceChildren();
    review.oldest = null;
  }
  const q = filters();
  if (more && review.oldest !== null) q.set("before_id", review.oldest);
  const { res, body } = await fetchJSON("/v1/records?" + q, { headers: authHeaders() });
  if (!res.ok) { reviewSay(detail(body, res.status), true); return; }
  const cards = await Promise.all(body.records.map(recordCard));
  $("records").append(...cards);
  review.oldest = body.next_before_id;
  $("older").hidden = body.next_before_id === null;
  const shown = $("records").children.length;
  reviewSay(shown ? shown + " decision" + (shown === 1 ? "" : "s") + " shown"
    : "no decision matches");
}

async function loadMonitor() {
  const box = $("monitor");
  const { res, body } = await fetchJSON("/v1/monitor", { headers: authHeaders() });
  if (!res.ok) { box.textContent = "monitor: " + detail(body, res.status); return; }
  box.replaceChildren();
  for (const c of body.classes) {
    const p = document.createElement("p");
    p.className = "drift " + (c.drifted ? "bad" : c.drifted === false ? "ok" : "none");
    const pv = (x) => (x === null || x === undefined ? "—" : x.toPrecision(2));
    p.textContent = c.class_name + " (profile v" + c.version + "): " +
      (c.drifted ? "DRIFT — " + c.reasons.join(" ") : c.drifted === false ? "no drift" :
        c.reasons.join(" ")) + " · reviewed normal " + c.normal_reviewed + ", flagged " +
      c.normal_flagged + " (p " + pv(c.flag_rate_p) + ") · recent scores " +
      (c.n_recent ?? c.recent_scores) + " vs calibration (p " + pv(c.shift_p) + ")";
    box.appendChild(p);
  }
}

function initReview(info) {
  if (!info.records) return;
  $("review").hidden = false;
  if (review.started) return;
  review.started = true;
  $("reviewer").value = localStorage.getItem("tipsomaly-reviewer") || "";
  $("review-filters").addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
  for (const id of ["f-outcome", "f-unreviewed", "f-since", "f-until"]) {
    $(id).addEventListener("change", () => loadRecords(false));
  }
  $("older").addEventListener("click", () => loadRecords(true));
  refresh();
}

function refresh() {
  loadRecords(false);
  loadMonitor();
}
