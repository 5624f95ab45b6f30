// The predict report's gallery: rows (most anomalous first) from the JSON in #rows, filtered by
// class and decision, shown a page at a time (images load lazily). No network, no library.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("rows").textContent);
  const PAGE = data.page_size;
  const DECISIONS = ["anomalous", "normal", "no decision", "error"];
  const $ = (id) => document.getElementById(id);
  let shown = data.rows;
  let page = 0;

  // a relative URL of a file under the report's folder (each path segment percent-encoded)
  function url(path) {
    return path.split("/").map(encodeURIComponent).join("/");
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function card(r, rank) {
    const c = el("div", "card");
    const decision = DECISIONS[r.d];
    c.dataset.name = r.n;
    c.dataset.class = data.classes[r.c];
    c.dataset.decision = decision;
    if (r.t) {
      const img = el("img");
      img.loading = "lazy";
      img.alt = r.n;
      img.src = url(data.thumbs + "/" + r.n + data.suffix);
      if (r.o) {
        const a = el("a");
        a.href = url(data.overlays + "/" + r.n + ".png");
        a.title = "the full-size overlay";
        a.appendChild(img);
        c.appendChild(a);
      } else {
        c.appendChild(img);
      }
    }
    const head = el("div", "head");
    head.appendChild(el("span", "name", r.n));
    head.appendChild(el("span", "badge " + decision.replace(" ", "-"), decision));
    c.appendChild(head);
    const meta = el("div", "meta");
    meta.appendChild(el("span", "rank", "#" + rank + " "));
    meta.appendChild(el("span", "class", data.classes[r.c] + " "));
    if (r.s !== null) {
      const s = el("span", "score", r.s.toFixed(4));
      s.dataset.score = r.s;
      meta.appendChild(s);
    }
    if (r.h !== null && r.h !== undefined) meta.appendChild(el("span", "", " (threshold " + r.h.toFixed(4) + ")"));
    c.appendChild(meta);
    if (r.e) c.appendChild(el("div", "error-text", r.e));
    if (r.x && r.x.length) {
      const ol = el("ol", "defects");
      for (const x of r.x) {
        const li = el("li", "", "peak " + x[1].toFixed(3) + ", " + x[2] + " px, box " + x[3].join(","));
        li.value = x[0];
        ol.appendChild(li);
      }
      c.appendChild(ol);
    } else if (r.x) {
      c.appendChild(el("div", "meta", "no defect region"));
    }
    return c;
  }

  function render() {
    const pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    const start = page * PAGE;
    const cards = shown.slice(start, start + PAGE).map((r, i) => card(r, r.r));
    $("gallery").replaceChildren(...cards);
    $("page").textContent = "page " + (page + 1) + " of " + pages + " (" + shown.length + " image(s))";
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
  }

  function apply() {
    const cls = $("f-class").value;
    const dec = $("f-decision").value;
    shown = data.rows.filter(
      (r) => (cls === "" || data.classes[r.c] === cls) && (dec === "" || DECISIONS[r.d] === dec)
    );
    page = 0;
    render();
  }

  function options(select, values) {
    for (const v of values) {
      const o = el("option", "", v);
      o.value = v;
      select.appendChild(o);
    }
  }

  options($("f-class"), data.classes);
  options($("f-decision"), DECISIONS.filter((d, i) => data.rows.some((r) => r.d === i)));
  $("f-class").addEventListener("change", apply);
  $("f-decision").addEventListener("change", apply);
  $("prev").addEventListener("click", () => { page -= 1; render(); });
  $("next").addEventListener("click", () => { page += 1; render(); });
  render();
  // the page is usable: tests and the benchmark read this mark's time
  performance.mark("report-ready");
  document.body.dataset.ready = "1";
})();
