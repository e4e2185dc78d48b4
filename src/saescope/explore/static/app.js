// saescope explorer: one page, hash routes, no build step. Every piece of text from the index or the model is
// inserted with textContent (never as HTML), since corpus tokens can contain anything.
"use strict";

(function () {
  const STATIC = window.SAESCOPE_STATIC === true;
  const data = (window.__saescope_data = window.__saescope_data || {});
  window.__saescope_put = function (key, value) {
    data[key] = value;
  };
  const main = document.getElementById("main");
  let renderId = 0;
  const PAGE = 100;

  // --- data -------------------------------------------------------------------------------------------
  function errorText(body, status) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && Array.isArray(body.detail)) return body.detail.map((d) => d.loc.join(".") + ": " + d.msg).join("; ");
    return "request failed (" + status + ")";
  }

  async function asJson(response) {
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error(errorText(body, response.status));
    return body;
  }

  // Server: GET api/<key>. Static export: data/<key>.js, a script that calls __saescope_put(key, value).
  function load(key) {
    if (!STATIC) return fetch("api/" + key).then(asJson);
    if (key in data) return Promise.resolve(data[key]);
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = "data/" + key.split("/").map(encodeURIComponent).join("/") + ".js";
      script.onload = () => {
        script.remove();
        if (key in data) resolve(data[key]);
        else reject(new Error("the static export has no " + key));
      };
      script.onerror = () => {
        script.remove();
        reject(new Error("the static export has no " + key));
      };
      document.head.appendChild(script);
    });
  }

  function post(path, body) {
    return fetch("api/" + path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }).then(asJson);
  }

  function assetUrl(name) {
    return (STATIC ? "data/assets/" : "api/assets/") + encodeURIComponent(name);
  }

  // --- DOM helpers --------------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value) && Math.abs(value) < 1e9) return String(value);
    const a = Math.abs(value);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return value.toExponential(digits || 2);
    const text = value.toPrecision(digits || 4);
    return text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text;
  }

  function pct(value) {
    return value === null || value === undefined ? "–" : fmt(100 * value, 3) + "%";
  }

  function featureHref(sae, latent) {
    return "#/sae/" + encodeURIComponent(sae) + "/" + latent;
  }

  function saeHref(sae) {
    return "#/sae/" + encodeURIComponent(sae);
  }

  function shown(token) {
    return token.replace(/\n/g, "↵").replace(/\t/g, "⇥");
  }

  // One line of tokens, each highlighted by its activation (hover: the exact value).
  function tokenLine(tokens, acts, maxValue, focus, onClick) {
    const line = el("div", { class: "tokens" });
    tokens.forEach((token, i) => {
      const value = acts ? acts[i] || 0 : 0;
      const span = el("span", {
        class: "tok" + (value > 0 ? " active" : "") + (i === focus ? " focus" : ""),
        title: shown(token) + "  " + (value > 0 ? fmt(value, 4) : "0"),
        "data-value": value,
        "data-index": i,
      }, shown(token));
      if (value > 0 && maxValue > 0) {
        span.style.backgroundColor = "rgba(255, 128, 0, " + Math.min(1, 0.12 + 0.88 * (value / maxValue)).toFixed(3) + ")";
      }
      if (onClick) span.addEventListener("click", () => onClick(i));
      line.append(span);
    });
    return line;
  }

  function errorBox(error) {
    return el("p", { class: "error" }, String(error.message || error));
  }

  function needsServer(what) {
    return el("div", { class: "card" }, el("h2", {}, what),
      el("p", {}, "This page runs the model, so it needs the server: ", el("code", {}, "saescope serve RUN"), "."));
  }

  // A small bar chart (SVG). bars: [{height, label, cls}].
  function barChart(bars, options) {
    const width = options.width || 360, height = options.height || 120;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + (height + 18));
    svg.setAttribute("class", "chart");
    const top = Math.max(1, ...bars.map((b) => b.height));
    const w = width / Math.max(1, bars.length);
    bars.forEach((bar, i) => {
      const h = bar.height > 0 ? Math.max(1, (bar.height / top) * height) : 0;
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", (i * w).toFixed(2));
      rect.setAttribute("y", (height - h).toFixed(2));
      rect.setAttribute("width", Math.max(0.5, w - 0.5).toFixed(2));
      rect.setAttribute("height", h.toFixed(2));
      rect.setAttribute("class", bar.cls || "bar");
      const title = document.createElementNS(ns, "title");
      title.textContent = bar.label;
      rect.append(title);
      svg.append(rect);
    });
    for (const [x, text, anchor] of [[0, options.left || "", "start"], [width, options.right || "", "end"]]) {
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", x);
      label.setAttribute("y", height + 14);
      label.setAttribute("text-anchor", anchor);
      label.textContent = text;
      svg.append(label);
    }
    return svg;
  }

  // Where a latent writes (a CLT block: its own layer and every later one): one horizontal bar per output site,
  // relative to its largest decoder norm, so the split of its write across layers reads at a glance.
  function writesCard(writes, parent) {
    const top = Math.max(0, ...writes.map((w) => w.norm)) || 1;
    return el("div", { class: "card", id: "writes" }, el("h3", {}, "Writes to"),
      el("table", { class: "writes" }, writes.map((w) => {
        const fill = el("span", { class: "hbar" });
        fill.style.width = Math.max(0, Math.min(100, (100 * w.norm) / top)).toFixed(1) + "%";
        return el("tr", { title: w.site + ": decoder norm " + fmt(w.norm, 6) },
          el("td", {}, el("code", {}, w.site)), el("td", { class: "htrack-cell" }, el("span", { class: "htrack" }, fill)),
          el("td", { class: "num" }, fmt(w.norm, 3)));
      })),
      el("p", { class: "muted" }, "Norm of the latent's decoder row at each output site" +
        (parent ? " (a block of " + parent + ")" : "") + "; bars relative to the largest."));
  }

  // Explanations written by an LLM (saescope autointerp), the most recently scored first, with their detection
  // score: the scorer LLM's accuracy on balanced activating and non-activating contexts (0.5 = chance).
  function autointerpCard(rows) {
    return el("div", { class: "card", id: "autointerp" }, el("h3", {}, "Explanation"),
      rows.map((r, i) => el("div", { class: i ? "explanation muted" : "explanation" },
        el("p", { class: "explanation-text" }, r.explanation || "(empty)"),
        el("p", { class: "muted" }, "detection " + (r.detection === null ? "–" : fmt(r.detection, 3)) +
          (r.detection === null ? "" : " (" + (r.true_positives + r.true_negatives) + " of " + (r.n_activating + r.n_non_activating) + " contexts)") +
          " · explainer " + r.explainer + (r.scorer ? " · scorer " + r.scorer : "")))),
      el("p", { class: "muted" }, "Written and scored by language models (saescope autointerp); 0.5 is chance."));
  }

  // --- pages ----------------------------------------------------------------------------------------------
  let suiteCache = null;
  function suite() {
    if (!suiteCache) suiteCache = load("suite");
    return suiteCache;
  }

  const EVAL_COLUMNS = [
    ["l0", "L0 (eval)"], ["fvu", "FVU"], ["delta_lm_loss", "Δ LM loss"], ["loss_recovered", "loss rec."],
    ["dead_fraction", "dead (eval)"],
  ];

  async function overview(id) {
    const s = await suite();
    if (id !== renderId) return;
    const index = s.index;
    const corpus = index.corpus || {};
    const rows = s.saes.slice();
    let sortKey = null, descending = false;
    const table = el("table", { class: "grid", id: "suite-table" });
    const value = (row, key) => (key.startsWith("eval:") ? (row.evaluation || {})[key.slice(5)] : row[key]);
    const columns = [["name", "dictionary"], ["site", "site"], ["architecture", "arch."], ["width", "width"],
      ["l0", "L0 (index)"], ["dead_fraction", "dead (index)"], ...EVAL_COLUMNS.map(([k, t]) => ["eval:" + k, t])];
    function draw() {
      if (sortKey) {
        rows.sort((a, b) => {
          const x = value(a, sortKey), y = value(b, sortKey);
          const order = x === y ? 0 : x === undefined || x === null ? 1 : y === undefined || y === null ? -1 : x < y ? -1 : 1;
          return descending ? -order : order;
        });
      }
      table.replaceChildren(
        el("thead", {}, el("tr", {}, columns.map(([key, title]) => el("th", {
          class: "sortable", onclick: () => { descending = sortKey === key ? !descending : false; sortKey = key; draw(); },
        }, title + (sortKey === key ? (descending ? " ▼" : " ▲") : ""))))),
        el("tbody", {}, rows.map((row) => el("tr", {}, columns.map(([key]) => {
          if (key === "name") return el("td", {}, el("a", { href: saeHref(row.name) }, row.name));
          if (key.endsWith("dead_fraction")) return el("td", { class: "num" }, pct(value(row, key)));
          const v = value(row, key);
          return el("td", { class: typeof v === "number" ? "num" : "" }, fmt(v));
        })))),
      );
    }
    draw();
    const plots = s.assets.length
      ? el("section", { class: "plots" }, el("h2", {}, "Evaluation plots"),
        s.assets.map((name) => el("figure", {}, el("img", { src: assetUrl(name), alt: name, loading: "lazy" }),
          el("figcaption", {}, name))))
      : ""; // replaceChildren would show null as text
    main.replaceChildren(
      el("h1", {}, "Suite overview"),
      el("p", { class: "muted" },
        s.saes.length + " dictionaries of " + index.model + ", indexed on " + fmt(index.n_tokens) + " held-out tokens (" +
        (corpus.source || "?") + ", windows of " + (corpus.context_size || "?") + " tokens). " + (index.special_tokens || "")),
      table, plots,
    );
  }

  async function saePage(id, name, params) {
    const sort = params.get("sort") || "index";
    const order = params.get("order") || (sort === "index" ? "asc" : "desc");
    const dead = params.get("dead") || "show";
    const page = Math.max(0, parseInt(params.get("page") || "0", 10) || 0);
    const [doc, listing] = await Promise.all([load("saes/" + name), latentPage(name, sort, order, dead, page)]);
    if (id !== renderId) return;
    const sae = doc.sae;
    const hist = sae.log_density_histogram;
    const bars = hist.counts.map((count, i) => ({
      height: count, label: "10^" + fmt(hist.start + i * hist.step) + "–10^" + fmt(hist.start + (i + 1) * hist.step) + ": " + count + " latents",
    }));
    const go = (changes) => {
      const next = new URLSearchParams({ sort, order, dead, page: String(page), ...changes });
      location.hash = saeHref(name) + "?" + next.toString();
    };
    const jump = el("input", { type: "number", min: 0, max: sae.width - 1, placeholder: "latent", id: "jump" });
    const controls = el("div", { class: "controls" },
      el("label", {}, "sort ", el("select", { onchange: (e) => go({ sort: e.target.value, page: "0", order: e.target.value === "index" ? "asc" : "desc" }) },
        ["index", "density", "max_activation", "mean_activation", "detection"].map((k) => el("option", { value: k, selected: k === sort }, k.replace("_", " "))))),
      el("label", {}, " order ", el("select", { onchange: (e) => go({ order: e.target.value, page: "0" }) },
        ["asc", "desc"].map((k) => el("option", { value: k, selected: k === order }, k)))),
      el("label", {}, " dead latents ", el("select", { onchange: (e) => go({ dead: e.target.value, page: "0" }) },
        ["show", "hide", "only"].map((k) => el("option", { value: k, selected: k === dead }, k)))),
      el("form", { class: "inline", onsubmit: (e) => {
        e.preventDefault();
        const latent = parseInt(jump.value, 10);
        if (latent >= 0 && latent < sae.width) location.hash = featureHref(name, latent);
      } }, " jump to ", jump, el("button", { type: "submit" }, "go")),
    );
    const pages = Math.max(1, Math.ceil(listing.total / PAGE));
    const pager = el("div", { class: "pager" },
      el("button", { disabled: page === 0, onclick: () => go({ page: String(page - 1) }) }, "‹ previous"),
      " page " + (page + 1) + " of " + pages + " (" + listing.total + " latents) ",
      el("button", { disabled: page + 1 >= pages, onclick: () => go({ page: String(page + 1) }) }, "next ›"));
    // Columns that sort the listing: clicking one sorts by it (again: reverses the order).
    const sortBy = { density: "density", "max act.": "max_activation", "mean act.": "mean_activation", detection: "detection" };
    const header = (t) => sortBy[t] ? el("th", { class: "sortable", title: "sort by " + t,
      onclick: () => go({ sort: sortBy[t], page: "0", order: sort === sortBy[t] && order === "desc" ? "asc" : "desc" }) },
    t + (sort === sortBy[t] ? (order === "desc" ? " ▼" : " ▲") : "")) : el("th", {}, t);
    const table = el("table", { class: "grid", id: "latents-table" },
      el("thead", {}, el("tr", {}, ["latent", "density", "firings", "max act.", "mean act.", "detection", "top logit tokens"].map(header))),
      el("tbody", {}, listing.latents.map((row) => el("tr", { class: row.dead ? "dead" : "" },
        el("td", {}, el("a", { href: featureHref(name, row.latent) }, String(row.latent)), row.dead ? el("span", { class: "badge" }, "dead") : null),
        el("td", { class: "num" }, pct(row.density)), el("td", { class: "num" }, fmt(row.fire_count)),
        el("td", { class: "num" }, fmt(row.max_activation)), el("td", { class: "num" }, fmt(row.mean_activation)),
        el("td", { class: "num detection", title: row.explanation || "not explained (saescope autointerp)" }, fmt(row.detection, 3)),
        el("td", {}, row.top_tokens.map((t) => el("code", { class: "logit" }, shown(t))))))));
    const later = sae.write_sites.slice(1); // a CLT block also writes every later layer
    const evaluation = sae.metrics ? el("p", { class: "muted" }, "evaluation: " + EVAL_COLUMNS.map(([k, t]) => {
      const flat = Object.assign({}, sae.metrics.reconstruction || {}, sae.metrics.lm_loss || {});
      return t + " " + (k === "dead_fraction" ? pct(flat[k]) : fmt(flat[k]));
    }).join(" · ")) : ""; // replaceChildren would show null as text
    main.replaceChildren(
      el("p", { class: "crumbs" }, el("a", { href: "#/" }, "suite"), " / ", name),
      el("h1", {}, name),
      el("p", {}, sae.site + (sae.site_out !== sae.site ? " → " + sae.site_out : "") +
        (later.length ? " (also writes " + (later.length > 2 ? later[0] + " … " + later[later.length - 1] : later.join(", ")) + ")" : "") +
        (sae.parent ? " · a block of " + sae.parent : "") + " · " + sae.architecture + " · " +
        sae.width + " latents · L0 " + fmt(sae.l0) + " on " + fmt(sae.n_tokens) + " indexed tokens · " + sae.n_dead + " dead (" + pct(sae.dead_fraction) + ")"),
      evaluation,
      el("div", { class: "card" }, el("h3", {}, "Latent density (log10 of the firing fraction)"),
        barChart(bars, { left: "10^" + hist.start, right: "10^" + fmt(hist.start + hist.counts.length * hist.step) }),
        el("p", { class: "muted" }, hist.dead + " latents never fired (not drawn).")),
      controls, pager, table,
    );
  }

  async function latentPage(name, sort, order, dead, page) {
    if (!STATIC) {
      const query = new URLSearchParams({ sort, order, dead, offset: String(page * PAGE), limit: String(PAGE) });
      return load("saes/" + name + "/latents?" + query.toString());
    }
    const all = await load("saes/" + name + "/latents");
    const key = { index: "latent", density: "density", max_activation: "max_activation", mean_activation: "mean_activation", detection: "detection" }[sort] || "latent";
    let rows = all.filter((r) => (dead === "hide" ? !r.dead : dead === "only" ? r.dead : true));
    rows = rows.slice().sort((a, b) => (a[key] - b[key]) || (a.latent - b.latent));
    if (order === "desc") rows.reverse();
    // Unscored latents (no detection score) last, whichever the order, as the server sorts them.
    if (key === "detection") rows = rows.filter((r) => r.detection !== null && r.detection !== undefined)
      .concat(rows.filter((r) => r.detection === null || r.detection === undefined));
    return { total: rows.length, latents: rows.slice(page * PAGE, (page + 1) * PAGE) };
  }

  function exampleRow(example, maxValue) {
    return el("div", { class: "example" },
      el("span", { class: "value", title: "window " + example.window + ", position " + example.position }, fmt(example.value, 3)),
      tokenLine(example.tokens, example.acts, maxValue, example.focus));
  }

  async function featurePage(id, name, latent) {
    const doc = await load("saes/" + name + "/latents/" + latent);
    if (id !== renderId) return;
    const maxValue = doc.max_activation;
    const hist = doc.histogram;
    const perInterval = Math.max(1, Math.round(hist.interval_width / (hist.bin_width || 1)));
    const bars = hist.counts.map((count, j) => ({
      height: count, cls: Math.floor(j / perInterval) % 2 ? "bar alt" : "bar",
      label: "[" + fmt(j * hist.bin_width) + ", " + fmt((j + 1) * hist.bin_width) + "): " + count,
    }));
    const logitTable = (title, rows, cls) => el("div", { class: "logits " + cls }, el("h4", {}, title),
      el("table", {}, rows.map((r) => el("tr", {}, el("td", {}, el("code", {}, shown(r.token))), el("td", { class: "num" }, fmt(r.value, 3))))));
    const stats = el("div", { class: "card stats" },
      el("h3", {}, "Activations"),
      doc.dead ? el("p", { class: "badge big" }, "dead: never fired on the " + fmt(doc.n_tokens) + " indexed tokens") : null,
      el("dl", {},
        el("dt", {}, "density"), el("dd", { id: "density" }, pct(doc.density) + " (" + doc.fire_count + " of " + fmt(doc.n_tokens) + " tokens)"),
        el("dt", {}, "max activation"), el("dd", {}, fmt(doc.max_activation)),
        el("dt", {}, "mean activation (when firing)"), el("dd", {}, fmt(doc.mean_activation))),
      hist.counts.length ? barChart(bars, { left: "0", right: fmt(hist.counts.length * hist.bin_width) }) : null,
      hist.counts.length ? el("p", { class: "muted" }, "Histogram of non-zero activations; shading alternates by interval.") : null);
    const writes = doc.writes.length > 1 ? writesCard(doc.writes, doc.parent) : null;
    const explained = doc.autointerp && doc.autointerp.length ? autointerpCard(doc.autointerp) : null;
    const logits = el("div", { class: "card" }, el("h3", {}, "Logit effects"),
      el("div", { class: "two" }, logitTable("promoted", doc.top_logits, "pos"), logitTable("suppressed", doc.bottom_logits, "neg")));
    const neighbours = el("div", { class: "card" }, el("h3", {}, "Nearest latents (decoder cosine)"),
      el("ol", {}, doc.neighbours.map((n) => el("li", {}, el("a", { href: featureHref(n.sae, n.latent) },
        (n.sae === name ? "" : n.sae + " / ") + n.latent), " " + fmt(n.cosine, 3)))));
    const groups = [el("section", { class: "group", id: "top-examples" }, el("h3", {}, "Top activations"),
      doc.top_examples.length ? doc.top_examples.map((e) => exampleRow(e, maxValue)) : el("p", { class: "muted" }, "No firing in the index."))];
    if (doc.shipped_examples && doc.shipped_examples.length) {
      groups.push(el("section", { class: "group", id: "shipped-examples" },
        el("h3", {}, "Top activations shipped with the release"),
        el("p", { class: "muted" }, "From the dictionary's examples.safetensors, on the release's own text; only the highlighted token's activation is known."),
        doc.shipped_examples.map((e) => exampleRow(e, Math.max(maxValue, e.value)))));
    }
    for (const interval of doc.intervals) {
      if (!interval.examples.length) continue;
      groups.push(el("section", { class: "group interval" },
        el("h4", {}, "Interval [" + fmt(interval.lo, 3) + ", " + fmt(interval.hi, 3) + (interval.closed ? "]" : ")") +
          " — " + pct(interval.share) + " of firings (" + interval.fire_count + "), sampled uniformly"),
        interval.examples.map((e) => exampleRow(e, maxValue))));
    }
    const links = [el("a", { href: featureHref(name, Math.max(0, latent - 1)) }, "‹ previous"), " · ",
      el("a", { href: featureHref(name, Math.min(doc.width - 1, latent + 1)) }, "next ›")];
    if (!STATIC) {
      links.push(" · ", el("a", { href: "#/steer?sae=" + encodeURIComponent(name) + "&latent=" + latent }, "steer with it"),
        " · ", el("a", { href: "api/saes/" + encodeURIComponent(name) + "/latents/" + latent + "/neuronpedia", download: name + "-" + latent + ".json" }, "Neuronpedia JSON"));
    }
    main.replaceChildren(
      el("p", { class: "crumbs" }, el("a", { href: "#/" }, "suite"), " / ", el("a", { href: saeHref(name) }, name), " / " + latent),
      el("h1", {}, name + " · latent " + latent), el("p", { class: "links" }, links),
      el("div", { class: "feature" }, el("div", { class: "side" }, explained, stats, writes, logits, neighbours), el("div", { class: "examples" }, groups)));
  }

  function saeSelect(saes, selected, attrs) {
    return el("select", attrs || {}, saes.map((s) => el("option", { value: s.name, selected: s.name === selected }, s.name + " (" + s.site + ")")));
  }

  async function searchPage(id, params) {
    if (STATIC) return main.replaceChildren(needsServer("Search by text"));
    const s = await suite();
    if (id !== renderId) return;
    const text = el("textarea", { id: "search-text", rows: 3, maxlength: 4000, placeholder: "Type a prompt…" }, params.get("text") || "");
    const picker = el("select", { id: "search-saes", multiple: true, size: Math.min(10, s.saes.length) },
      s.saes.map((sae) => el("option", { value: sae.name, selected: true }, sae.name + " (" + sae.site + ")")));
    const perToken = el("input", { type: "number", min: 1, max: 20, value: 5 });
    const features = el("input", { type: "number", min: 1, max: 50, value: 10 });
    const results = el("div", { id: "search-results" });
    const button = el("button", { type: "submit", id: "search-run" }, "Run");
    const form = el("form", { class: "card", onsubmit: async (e) => {
      e.preventDefault();
      const chosen = Array.from(picker.selectedOptions).map((o) => o.value);
      button.disabled = true;
      results.replaceChildren(el("p", { class: "muted" }, "Running the model…"));
      try {
        const answer = await post("search", { text: text.value, saes: chosen.length === s.saes.length ? [] : chosen,
          per_token: parseInt(perToken.value, 10) || 5, features: parseInt(features.value, 10) || 10 });
        results.replaceChildren(searchResults(answer));
      } catch (error) {
        results.replaceChildren(errorBox(error));
      } finally {
        button.disabled = false;
      }
    } },
    el("h2", {}, "Search by text"), text,
    el("div", { class: "controls" }, el("label", {}, "dictionaries ", picker),
      el("div", {}, el("label", {}, "top latents per token ", perToken), el("br"), el("label", {}, "latents per dictionary ", features),
        el("br"), el("button", { type: "button", onclick: () => Array.from(picker.options).forEach((o) => (o.selected = true)) }, "all"),
        el("button", { type: "button", onclick: () => Array.from(picker.options).forEach((o) => (o.selected = false)) }, "none"))),
    button);
    main.replaceChildren(form, results);
  }

  function searchResults(answer) {
    const detail = el("div", { class: "card", id: "token-detail" });
    function showToken(i) {
      strip.querySelectorAll(".tok").forEach((t) => t.classList.toggle("focus", Number(t.dataset.index) === i));
      detail.replaceChildren(el("h3", {}, "Top latents at token " + i + ": “" + shown(answer.tokens[i]) + "”"),
        ...answer.saes.map((sae) => {
          const top = sae.per_token[i];
          return el("div", { class: "per-token" }, el("strong", {}, sae.sae), ": ",
            top.length ? top.map((t) => el("a", { class: "chip", href: featureHref(sae.sae, t.latent) }, t.latent + " (" + fmt(t.value, 3) + ")"))
              : el("span", { class: "muted" }, "nothing fires"));
        }));
    }
    const strip = tokenLine(answer.tokens, null, 0, -1, showToken);
    strip.classList.add("clickable");
    const sections = answer.saes.map((sae) => el("section", { class: "card search-sae" },
      el("h3", {}, el("a", { href: saeHref(sae.sae) }, sae.sae), " ", el("span", { class: "muted" }, sae.site)),
      sae.features.length ? sae.features.map((f) => el("div", { class: "example" },
        el("a", { class: "value", href: featureHref(sae.sae, f.latent) }, String(f.latent)),
        el("span", { class: "muted max" }, "max " + fmt(f.max_value, 3)),
        tokenLine(answer.tokens, f.values, f.max_value, f.max_index))) : el("p", { class: "muted" }, "No latent fires on this prompt.")));
    const wrapper = el("div", {}, el("div", { class: "card" }, el("h3", {}, "Tokens (click one)"), strip), detail, sections);
    showToken(answer.tokens.length - 1);
    return wrapper;
  }

  async function steerPage(id, params) {
    if (STATIC) return main.replaceChildren(needsServer("Steering"));
    const s = await suite();
    if (id !== renderId) return;
    const rows = el("tbody", {});
    function addRow(sae, latent, strength) {
      const row = el("tr", {},
        el("td", {}, saeSelect(s.saes, sae, { class: "steer-sae" })),
        el("td", {}, el("input", { type: "number", class: "steer-latent", min: 0, value: latent })),
        el("td", {}, el("input", { type: "number", class: "steer-strength", min: -100, max: 100, step: 0.5, value: strength })),
        el("td", {}, el("button", { type: "button", onclick: () => row.remove() }, "remove")));
      rows.append(row);
    }
    addRow(params.get("sae") || s.saes[0].name, params.get("latent") || 0, 2);
    const text = el("textarea", { id: "steer-text", rows: 2, maxlength: 4000 }, params.get("text") || "The weather today is");
    const maxTokens = el("input", { type: "number", min: 1, max: 64, value: 24 });
    const temperature = el("input", { type: "number", min: 0, max: 2, step: 0.1, value: 0 });
    const seed = el("input", { type: "number", min: 0, value: 0 });
    const out = el("div", { id: "steer-results" });
    const button = el("button", { type: "submit" }, "Generate");
    const form = el("form", { class: "card", onsubmit: async (e) => {
      e.preventDefault();
      const interventions = Array.from(rows.children).map((row) => ({
        sae: row.querySelector(".steer-sae").value,
        latent: parseInt(row.querySelector(".steer-latent").value, 10),
        strength: parseFloat(row.querySelector(".steer-strength").value),
      }));
      button.disabled = true;
      out.replaceChildren(el("p", { class: "muted" }, "Generating…"));
      try {
        const answer = await post("steer", { text: text.value, interventions,
          max_new_tokens: parseInt(maxTokens.value, 10), temperature: parseFloat(temperature.value), seed: parseInt(seed.value, 10) });
        const prompt = answer.prompt_tokens.slice(1).join("");
        out.replaceChildren(el("div", { class: "two" },
          el("div", { class: "card" }, el("h3", {}, "Default"), el("p", { class: "generation" }, el("span", { class: "muted" }, prompt), answer.default)),
          el("div", { class: "card" }, el("h3", {}, "Steered"), el("p", { class: "generation" }, el("span", { class: "muted" }, prompt), answer.steered))));
      } catch (error) {
        out.replaceChildren(errorBox(error));
      } finally {
        button.disabled = false;
      }
    } },
    el("h2", {}, "Steering"),
    el("p", { class: "muted" }, "Adds strength × (the latent's max activation) × its decoder direction where the dictionary writes, on every token after BOS."),
    el("table", { class: "grid" }, el("thead", {}, el("tr", {}, ["dictionary", "latent", "strength", ""].map((t) => el("th", {}, t)))), rows),
    el("button", { type: "button", onclick: () => addRow(s.saes[0].name, 0, 2) }, "add latent"),
    el("p", {}, text),
    el("div", { class: "controls" }, el("label", {}, "new tokens ", maxTokens), el("label", {}, " temperature ", temperature),
      el("label", {}, " seed ", seed)),
    button);
    main.replaceChildren(form, out);
  }

  // --- router -------------------------------------------------------------------------------------------
  async function route() {
    const id = ++renderId;
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, query] = hash.split("?");
    const params = new URLSearchParams(query || "");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    window.scrollTo(0, 0);
    try {
      if (parts.length === 0) await overview(id);
      else if (parts[0] === "sae" && parts.length === 2) await saePage(id, parts[1], params);
      else if (parts[0] === "sae" && parts.length === 3 && /^\d+$/.test(parts[2])) await featurePage(id, parts[1], parseInt(parts[2], 10));
      else if (parts[0] === "search") await searchPage(id, params);
      else if (parts[0] === "steer") await steerPage(id, params);
      else main.replaceChildren(el("p", { class: "error" }, "No such page: " + hash));
    } catch (error) {
      if (id === renderId) main.replaceChildren(errorBox(error));
    }
  }

  if (STATIC) document.querySelectorAll("nav .live").forEach((a) => a.remove());
  suite().then((s) => {
    document.getElementById("model").textContent = String(s.index.model).split("/").pop() + " · " + s.saes.length + " dictionaries";
  }).catch(() => {});
  window.addEventListener("hashchange", route);
  route();
})();
