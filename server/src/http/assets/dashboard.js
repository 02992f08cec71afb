// monitor's dashboard: one script for the three pages (one HTML document;
// the path says which page it is). Everything shown comes from /api/ on this origin.
// Rules: strings from agents only ever go into the page with textContent
// (never as HTML); no metric is hard-coded (/api/metrics lists them);
// no request leaves this server.
"use strict";

(function () {
  const POLL_HOSTS_MS = 3000;
  const POLL_SERIES_MS = 30000;
  const POLL_SPARKS_MS = 15000;
  const POLL_SPARKS_PENDING_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg"; // a namespace name, never fetched
  const RANGES = [["15m", "15 min"], ["1h", "1 hour"], ["24h", "24 hours"], ["7d", "7 days"]];
  const HOT_PERCENT = 90;
  // Fleet rows put in the table at once (more than a tall screen shows),
  // then per later task.
  const FIRST_ROWS = 60;
  const CHUNK_ROWS = 250;

  // What the tests and a curious person can look at.
  const state = {
    metrics: [], health: [], hosts: null, sparks: null, plot: null, healthPlot: null, plots: [],
    errors: 0,
  };
  window.monitorDashboard = state;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }

  function setStatus(text, bad) {
    const s = document.getElementById("status");
    s.textContent = text;
    s.classList.toggle("bad", !!bad);
  }

  // Answers every page shares (/api/hosts, /api/sparklines) carry an
  // ETag: the page sends back the one it holds and gets 304, no body,
  // when nothing changed; then it gets the very object it had.
  const held = new Map(); // path -> { etag, answer }

  // `shape` (if given) turns a new answer into what the page keeps.
  async function getJson(path, shared, shape) {
    const h = shared ? held.get(path) : undefined;
    const headers = h ? { "If-None-Match": h.etag } : {};
    const r = await fetch(path, { credentials: "same-origin", cache: "no-store", headers });
    if (r.status === 304 && h) return h.answer;
    if (!r.ok) {
      let why = r.status + " " + r.statusText;
      try { why = (await r.json()).error || why; } catch (_) { /* not JSON */ }
      const e = new Error(why);
      e.status = r.status;
      throw e;
    }
    const answer = shape ? shape(await r.json()) : await r.json();
    const etag = r.headers.get("ETag");
    if (shared && etag) held.set(path, { etag, answer });
    return answer;
  }

  // The fleet page asks for the hosts in the compact form (one array per
  // host, values rounded to what it shows: a sixth of the bytes at
  // 5,000 hosts) and turns each row back into the host object the rest of
  // the page reads. A server without the form answers the full one.
  const HOSTS_PATH = "/api/hosts?form=rows";
  function fromRows(answer) {
    if (answer.form !== "rows") return answer;
    const names = answer.latest;
    const hosts = answer.hosts.map((r) => ({
      hostname: r[0],
      online: r[1],
      last_seen_unix_ms: r[2] === null ? 0 : r[2],
      clock_offset_ms: r[3],
      dropped_batches_total: r[4],
      latest: names.flatMap((m, i) => (r[5][i] === null ? [] : [{ metric: m, labels: {}, value: r[5][i] }])),
      health: (r[6] === null ? [] : [{ metric: "temp_celsius", labels: {}, value: r[6] }]).concat(
        r[7].map(([mountpoint, value]) => ({ metric: "fs_used_percent", labels: { mountpoint }, value }))),
      throttled_now: r[8],
    }));
    return Object.assign({}, answer, { hosts });
  }

  function fmtTime(ms) {
    return ms > 0 ? new Date(ms).toLocaleString() : "never";
  }

  function fmtValue(v, unit) {
    if (v === null || v === undefined) return "–";
    if (unit === "percent") return (Number.isInteger(v) ? String(v) : v.toFixed(1)) + " %";
    if (unit === "KiB/s") {
      if (Math.abs(v) >= 1024 * 1024) return (v / 1024 / 1024).toFixed(1) + " GiB/s";
      if (Math.abs(v) >= 1024) return (v / 1024).toFixed(1) + " MiB/s";
      return v.toFixed(1) + " KiB/s";
    }
    return String(Math.round(v * 1000) / 1000) + " " + unit;
  }

  // A series' key: its metric and labels (labelled metrics will come).
  function seriesKey(s) {
    const labels = Object.entries(s.labels || {}).map(([k, v]) => k + "=" + v).sort();
    return labels.length ? s.metric + "{" + labels.join(",") + "}" : s.metric;
  }

  function metricOf(key) {
    return state.metrics.find((m) => seriesKey(m) === key);
  }

  function unitShort(unit) {
    return unit === "percent" ? "%" : unit;
  }

  function hostState(h) {
    if (h.online) return "online";
    return h.last_seen_unix_ms > 0 ? "offline since " + fmtTime(h.last_seen_unix_ms) : "offline";
  }

  async function loadMetrics() {
    const answer = await getJson("/api/metrics");
    state.metrics = answer.metrics;
    state.health = answer.health || [];
  }

  // ---- fleet page ----

  // A sparkline: levels 0..100 (null: no data, a break in the line).
  function sparkline(levels) {
    const w = 60, h = 16;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("width", String(w));
    svg.setAttribute("height", String(h));
    svg.setAttribute("aria-hidden", "true");
    const step = levels.length > 1 ? w / (levels.length - 1) : w;
    let run = [];
    const flush = () => {
      // A lone point is a short dash, so it shows.
      if (run.length === 1) {
        const [x, y] = run[0].split(",").map(Number);
        run.push((x + 2).toFixed(1) + "," + y.toFixed(1));
      }
      if (run.length > 1) {
        const line = document.createElementNS(SVG, "polyline");
        line.setAttribute("points", run.join(" "));
        svg.append(line);
      }
      run = [];
    };
    levels.forEach((l, i) => {
      if (l === null) flush();
      else run.push((i * step).toFixed(1) + "," + (h - 1 - (l / 100) * (h - 2)).toFixed(1));
    });
    flush();
    return svg;
  }

  // The health columns of the fleet page (issue 14): temperature (hot over
  // 80 °C or while the Pi's firmware throttles) and the fullest file
  // system (hot over 90 %). Each gives { value (for sorting), text, hot }.
  const HOT_CELSIUS = 80;
  const HEALTH_COLUMNS = [
    {
      key: "temp_celsius", title: "Temp (°C)",
      health: (h) => {
        const t = (h.health || []).find((v) => v.metric === "temp_celsius");
        const throttled = h.throttled_now || [];
        const text = (t ? t.value.toFixed(1) : "–") +
          (throttled.length ? " ⚠ " + throttled.join(", ") : "");
        return { value: t ? t.value : null, text, hot: (t && t.value > HOT_CELSIUS) || throttled.length > 0 };
      },
    },
    {
      key: "fullest_fs", title: "Fullest FS (%)",
      health: (h) => {
        const fs = (h.health || []).filter((v) => v.metric === "fs_used_percent");
        if (!fs.length) return { value: null, text: "–", hot: false };
        const top = fs.reduce((a, b) => (b.value > a.value ? b : a));
        return {
          value: top.value,
          text: top.value.toFixed(0) + " % " + (top.labels.mountpoint || ""),
          hot: top.value > HOT_PERCENT,
        };
      },
    },
  ];

  function fleetPage(main, firstHosts) {
    const sort = { key: "hostname", dir: 1 };
    const filter = el("input", {
      type: "search", placeholder: "Filter by name", "aria-label": "Filter hosts by name",
      oninput: () => render(),
    });
    const summary = el("p", { class: "summary" });
    const head = el("thead");
    const body = el("tbody");
    const table = el("table", { class: "fleet" }, head, body);
    main.append(el("h1", { text: "Fleet" }), el("div", { class: "tools" }, filter, summary),
      el("div", { class: "scroll" }, table));

    const columns = () => [
      { key: "hostname", title: "Host" },
      { key: "state", title: "State" },
      ...state.metrics.map((m) => ({
        key: seriesKey(m), title: m.metric + " (" + unitShort(m.unit) + ")", metric: m,
      })),
      ...HEALTH_COLUMNS,
      { key: "clock_offset_ms", title: "Clock offset (ms)" },
      { key: "dropped_batches_total", title: "Dropped batches" },
    ];
    // The metrics are known before this page starts: the columns are fixed.
    const cols = columns();

    // One row per host, kept from poll to poll: a poll writes only the
    // texts and classes that changed, and moves rows only when the order
    // did (rebuilding 1,000 hosts' 10,000 cells every 3 s costs the
    // browser a full table layout each time).
    const rows = new Map(); // hostname -> { tr, cells, texts, host, drawn }
    const rowOf = new WeakMap(); // tr -> its row
    // Sparklines are drawn only for rows on or near the screen (drawing
    // 6,000 of them first would delay the table by a second); the others
    // are drawn when scrolled to.
    const near = new Set();
    const observer = typeof IntersectionObserver === "function"
      ? new IntersectionObserver((entries) => {
        for (const e of entries) {
          const r = rowOf.get(e.target);
          if (!r) continue;
          if (e.isIntersecting) {
            near.add(r);
            drawSparks(r);
          } else {
            near.delete(r);
          }
        }
      }, { rootMargin: "400px 0px" })
      : null;
    // Each host's latest values by series key, made once per answer.
    const latestOf = new WeakMap();

    function latest(h, key) {
      let byKey = latestOf.get(h);
      if (!byKey) {
        byKey = new Map(h.latest.map((l) => [seriesKey(l), l.value]));
        latestOf.set(h, byKey);
      }
      const v = byKey.get(key);
      return v === undefined ? null : v;
    }

    function sortValue(h, c) {
      if (c.key === "hostname") return h.hostname;
      if (c.key === "state") return h.online ? 1 : 0;
      if (c.metric) return latest(h, c.key) ?? -Infinity;
      if (c.health) return c.health(h).value ?? -Infinity;
      return h[c.key];
    }

    function newRow(h) {
      const tr = el("tr", { "data-host": h.hostname });
      const cells = cols.map((c) => {
        const td = document.createElement("td");
        if (c.key === "hostname") {
          td.append(el("a", { href: "/host/" + encodeURIComponent(h.hostname), text: h.hostname }));
        } else if (c.key === "state") {
          td.className = "state";
        } else if (c.metric) {
          // A fixed box for the sparkline, so drawing it later moves nothing.
          td.append(el("span", { class: "sparkbox" }), el("span"));
        }
        tr.append(td);
        return td;
      });
      const r = { tr, cells, texts: cols.map(() => null), host: h, drawn: new Map() };
      rowOf.set(tr, r);
      if (observer) observer.observe(tr);
      else near.add(r);
      return r;
    }

    function setText(r, i, node, text) {
      if (r.texts[i] !== text) {
        r.texts[i] = text;
        node.textContent = text;
      }
    }

    // Writes what changed of host `h` into its row.
    function update(r, h) {
      r.host = h;
      const rowClass = h.online ? "online" : "offline";
      if (r.tr.className !== rowClass) r.tr.className = rowClass;
      cols.forEach((c, i) => {
        const td = r.cells[i];
        if (c.key === "hostname") return;
        if (c.key === "state") {
          setText(r, i, td, hostState(h));
        } else if (c.metric) {
          const v = latest(h, c.key);
          setText(r, i, td.lastChild, fmtValue(v, c.metric.unit));
          td.className = c.metric.percent && v !== null && v > HOT_PERCENT ? "num hot" : "num";
        } else if (c.health) {
          const cell = c.health(h);
          setText(r, i, td, cell.text);
          td.className = cell.hot ? "num hot" : "num";
        } else {
          setText(r, i, td, String(h[c.key]));
          td.className = c.key === "dropped_batches_total" && h[c.key] > 0 ? "num warn" : "num";
        }
      });
    }

    // Draws the row's sparklines whose levels changed since it last drew.
    function drawSparks(r) {
      const per = state.sparks && state.sparks[r.host.hostname];
      cols.forEach((c, i) => {
        if (!c.metric) return;
        const levels = (per && per[c.key]) || null;
        if (r.drawn.get(c.key) === levels) return;
        r.drawn.set(c.key, levels);
        const box = r.cells[i].firstChild;
        if (levels) box.replaceChildren(sparkline(levels));
        else box.replaceChildren();
      });
    }

    function renderHead() {
      head.replaceChildren(el("tr", {}, ...cols.map((c) => {
        const mark = sort.key === c.key ? (sort.dir > 0 ? " ▲" : " ▼") : "";
        return el("th", {
          scope: "col", tabindex: "0", text: c.title + mark,
          onclick: () => {
            sort.dir = sort.key === c.key ? -sort.dir : 1;
            sort.key = c.key;
            render();
          },
        });
      })));
    }

    // Puts `hosts`' rows in the table in that order, each made or updated
    // as it goes in: a screenful at once, the rest in chunks in later
    // tasks (each chunk in one fragment). The first frame then builds,
    // styles, lays out and paints a screenful of rows, not all 1,000 (that
    // frame alone took a second on a loaded machine); a newer call stops
    // an older one's chunks.
    let inserting = 0;
    let shown = []; // the hostnames in the table, in order, once complete
    function insert(hosts) {
      const generation = ++inserting;
      shown = [];
      let at = 0;
      const chunk = (n) => {
        const frag = document.createDocumentFragment();
        for (const h of hosts.slice(at, at + n)) {
          let r = rows.get(h.hostname);
          if (!r) {
            r = newRow(h);
            rows.set(h.hostname, r);
          }
          update(r, h);
          frag.append(r.tr);
        }
        at += n;
        if (at >= hosts.length) shown = hosts.map((h) => h.hostname);
        return frag;
      };
      body.replaceChildren(chunk(FIRST_ROWS));
      const more = () => {
        if (generation !== inserting) return;
        body.append(chunk(CHUNK_ROWS));
        if (at < hosts.length) setTimeout(more, 0);
      };
      if (at < hosts.length) setTimeout(more, 0);
    }

    function render() {
      if (!state.hosts) return;
      renderHead();
      const needle = filter.value.trim().toLowerCase();
      const hosts = state.hosts.filter((h) => h.hostname.toLowerCase().includes(needle));
      const col = cols.find((c) => c.key === sort.key) || cols[0];
      hosts.sort((a, b) => {
        const x = sortValue(a, col), y = sortValue(b, col);
        return (x < y ? -1 : x > y ? 1 : 0) * sort.dir;
      });
      // Hosts the server no longer lists lose their rows.
      const listed = new Set(state.hosts.map((h) => h.hostname));
      for (const [name, r] of rows) {
        if (listed.has(name)) continue;
        if (observer) observer.unobserve(r.tr);
        near.delete(r);
        rows.delete(name);
      }
      if (shown.length === hosts.length && hosts.every((h, i) => shown[i] === h.hostname)) {
        // The same rows in the same order: only what changed is written.
        for (const h of hosts) update(rows.get(h.hostname), h);
      } else {
        insert(hosts);
      }
      for (const r of near) drawSparks(r);
      const offline = state.hosts.filter((h) => !h.online).length;
      summary.textContent = state.hosts.length + " hosts, " + offline + " offline" +
        (needle ? ", " + hosts.length + " shown" : "");
    }

    let painted = false;
    let shownAnswer = null;
    let pollMs = POLL_HOSTS_MS;
    async function poll() {
      try {
        performance.mark("hosts-asked");
        const answer = firstHosts ? await firstHosts : await getJson(HOSTS_PATH, true, fromRows);
        firstHosts = null;
        // The server says how often its answer changes.
        if (answer.poll_ms > 0) pollMs = answer.poll_ms;
        performance.mark("hosts-parsed");
        // A 304 gives the answer already shown: nothing to write.
        if (answer !== shownAnswer) {
          shownAnswer = answer;
          state.hosts = answer.hosts;
          render();
        }
        performance.mark("hosts-rendered");
        if (!painted) {
          painted = true;
          // After the frame that shows the rows: the first render's end,
          // which bench/dashboard_render.py reports.
          requestAnimationFrame(() => setTimeout(() => performance.mark("hosts-painted"), 0));
        }
        setStatus("updated " + new Date().toLocaleTimeString());
      } catch (e) {
        firstHosts = null;
        state.errors++;
        setStatus("cannot update: " + e.message, true);
      }
      setTimeout(poll, pollMs);
    }

    async function pollSparks() {
      let next = POLL_SPARKS_MS;
      try {
        const answer = await getJson("/api/sparklines", true);
        // Still being made (a large fleet's first read): ask again soon.
        if (answer.pending) next = POLL_SPARKS_PENDING_MS;
        state.sparks = answer.hosts;
        for (const r of near) drawSparks(r);
        if (!answer.pending) performance.mark("sparks-drawn");
      } catch (e) {
        state.errors++;
        setStatus("cannot load the sparklines: " + e.message, true);
      }
      setTimeout(pollSparks, next);
    }
    poll();
    pollSparks();
  }

  // ---- host page ----

  function cssVar(name) {
    return getComputedStyle(document.body).getPropertyValue(name).trim();
  }

  function hostPage(main) {
    const hostname = decodeURIComponent(location.pathname.replace(/^\/host\//, ""));
    document.title = "monitor: " + hostname;
    const heading = el("h1", { text: hostname });
    const info = el("p", { class: "summary" });
    const ranges = el("div", { class: "ranges", role: "group", "aria-label": "Time range" });
    const plots = el("div", { class: "plots" });
    const healthHead = el("h2", { text: "Health" });
    healthHead.hidden = true;
    const healthNote = el("p", { class: "summary" });
    const healthPlots = el("div", { class: "plots health" });
    const cmdTable = el("table", { class: "commands" });
    main.append(heading, info, ranges, plots, healthHead, healthNote, healthPlots,
      el("h2", { text: "Last commands" }), el("div", { class: "scroll" }, cmdTable));

    let range = "1h";
    let zoom = null; // [since_ms, until_ms] after a drag, until a range is picked
    let charts = [];
    let loads = 0; // which loadSeries() is the newest

    for (const [r, label] of RANGES) {
      ranges.append(el("button", {
        type: "button", text: label, "data-range": r,
        onclick: () => { range = r; zoom = null; loadSeries(); },
      }));
    }

    function markRange() {
      for (const b of ranges.querySelectorAll("button")) {
        b.classList.toggle("active", !zoom && b.dataset.range === range);
      }
    }

    function width() {
      return Math.max(260, Math.min(plots.clientWidth || 600, 1200));
    }

    // One plot in a new figure (`key` names it for tests) of `lines` (each
    // { label, values, stroke, width, value, step }) over `times`; `band`
    // fills between two of its series (uPlot indices). Every plot of the
    // page has the same x range from `x0`, hover (values formatted in
    // `unit`, times in the viewer's zone), cursor sync and drag-to-zoom
    // (a drag asks the server for that range).
    function chart(into, key, { title, unit, times, x0, until, lines, band, y, yAxis }) {
      const fg = cssVar("--fg"), grid = cssVar("--grid");
      const box = el("figure", { class: "plot", "data-series": key });
      into.append(box);
      const axisValues = (u, vals) => vals.map((v) => fmtValue(v, unit));
      const opts = {
        title,
        width: width(),
        height: 180,
        cursor: { sync: { key: "host" }, drag: { x: true, y: false, setScale: false } },
        // From the first data (a new host is not a flat empty hour) to
        // the end asked for, so a host that went quiet shows it.
        scales: { x: { time: true, range: () => [x0, until] }, y: y || {} },
        axes: [
          { stroke: fg, grid: { stroke: grid }, ticks: { stroke: grid } },
          Object.assign({ stroke: fg, grid: { stroke: grid }, ticks: { stroke: grid }, size: 84,
            values: axisValues }, yAxis || {}),
        ],
        series: [{}, ...lines.map((l) => ({
          label: l.label, stroke: l.stroke, width: l.width || 1.5,
          value: l.value || ((u, v) => fmtValue(v, unit)),
          ...(l.step ? { paths: uPlot.paths.stepped({ align: 1 }) } : {}),
        }))],
        bands: band ? [{ series: band, fill: cssVar("--band") }] : [],
        hooks: {
          setSelect: [(u) => {
            if (u.select.width < 2) return;
            const a = u.posToVal(u.select.left, "x");
            const b = u.posToVal(u.select.left + u.select.width, "x");
            u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
            zoom = [Math.floor(a * 1000), Math.ceil(b * 1000)];
            loadSeries();
          }],
        },
      };
      const c = new uPlot(opts, [times, ...lines.map((l) => l.values)], box);
      charts.push(c);
      return c;
    }

    // A series' mean as a line with its min and max as a band.
    function meanBand(s) {
      const band = cssVar("--band");
      return [
        { label: "mean", values: s.mean, stroke: cssVar("--line") },
        { label: "min", values: s.min, stroke: band, width: 1 },
        { label: "max", values: s.max, stroke: band, width: 1 },
      ];
    }

    function short(text, n) {
      return text.length > n ? text.slice(0, n - 1) + "…" : text;
    }

    // The n-th of several lines in one plot: hues apart, readable on both
    // backgrounds.
    function lineColour(n) {
      return n === 0 ? cssVar("--line") : "hsl(" + ((n * 137 + 30) % 360) + " 70% 50%)";
    }

    // The x range every plot of an answer shares: [first data, end asked].
    let xRange = null;

    function build(answer) {
      for (const c of charts) c.destroy();
      charts = [];
      plots.replaceChildren();
      healthPlots.replaceChildren();
      healthHead.hidden = true;
      healthNote.textContent = "";
      const x0 = answer.times.length ? answer.times[0] : answer.since_unix_ms / 1000;
      const until = answer.until_unix_ms / 1000;
      xRange = [x0, until];
      for (const s of answer.series) {
        const m = metricOf(seriesKey(s));
        chart(plots, seriesKey(s), {
          title: seriesKey(s) + " (" + unitShort(s.unit) + ")", unit: s.unit,
          times: answer.times, x0, until, lines: meanBand(s), band: [3, 2],
          y: m && m.percent ? { range: [0, 100] } : null,
        });
      }
      state.plots = charts;
    }

    // The health section (issue 14): a plot per health metric the host has
    // values of in the range (a VM without a thermal zone gets no
    // temperature plot), in /api/metrics' order. One series: its mean with
    // min and max; several (a mount point each): one line each, named in
    // the legend; conditions (0/1): a stepped lane each, up while the
    // condition held at any time in the bucket (its max).
    function buildHealth(health) {
      const [x0, until] = xRange;
      let shown = 0;
      for (const hm of state.health) {
        const series = health.series.filter((s) => s.metric === hm.metric);
        if (!series.length) continue;
        shown++;
        const nameOf = (s) => (hm.label && s.labels[hm.label]) || hm.metric;
        const common = { unit: hm.unit, times: health.times, x0, until };
        if (hm.flag) {
          // Lane i: i while clear, i + 0.8 while the condition held.
          const lanes = series.map((s, i) => ({
            label: nameOf(s), stroke: lineColour(i), step: true,
            values: s.max.map((v) => (v === null ? null : i + 0.8 * v)),
            value: (u, v) => (v === null || v === undefined ? "–" : v - i > 0.4 ? "yes" : "no"),
          }));
          chart(healthPlots, hm.metric, {
            ...common, title: hm.metric + " (up: held during the bucket)", lines: lanes,
            y: { range: [-0.2, series.length] },
            // Lane names cut to the axis' width (the legend has them whole),
            // so this plot's time axis lines up with the others'.
            yAxis: {
              splits: () => series.map((s, i) => i),
              values: (u, vals) => vals.map((v) => (series[v] ? short(nameOf(series[v]), 11) : "")),
            },
          });
        } else if (series.length === 1 && !hm.label) {
          chart(healthPlots, hm.metric, {
            ...common, title: hm.metric + " (" + unitShort(hm.unit) + ")",
            lines: meanBand(series[0]), band: [3, 2],
            y: hm.percent ? { range: [0, 100] } : null,
          });
        } else {
          chart(healthPlots, hm.metric, {
            ...common, title: hm.metric + " (" + unitShort(hm.unit) + ", mean)",
            lines: series.map((s, i) => ({ label: nameOf(s), values: s.mean, stroke: lineColour(i) })),
            y: hm.percent ? { range: [0, 100] } : null,
          });
        }
      }
      state.plots = charts;
      const left = health.devices_left_out;
      healthHead.hidden = shown === 0;
      healthNote.textContent = left ? left + " more devices not shown (at most 16 per metric)" : "";
    }

    async function loadSeries() {
      markRange();
      // About one point per pixel of the plot (the server allows 2,000).
      const points = "&points=" + Math.min(2000, Math.round(width()));
      const q = (zoom ? "since=" + zoom[0] + "&until=" + zoom[1] : "range=" + range) + points;
      const base = "/api/hosts/" + encodeURIComponent(hostname);
      // Both asked at once; the six are drawn as soon as they come (a long
      // range's health answer can take longer), the health section after
      // them, unless a newer load started meanwhile.
      const generation = ++loads;
      const healthAnswer = getJson(base + "/health?" + q);
      healthAnswer.catch(() => {}); // reported below
      try {
        const answer = await getJson(base + "/series?" + q);
        if (generation !== loads) return;
        state.plot = answer;
        build(answer);
        const health = await healthAnswer;
        if (generation !== loads) return;
        state.healthPlot = health;
        buildHealth(health);
        setStatus("updated " + new Date().toLocaleTimeString());
      } catch (e) {
        state.errors++;
        setStatus("cannot load the plots: " + e.message, true);
      }
    }

    async function pollHost() {
      try {
        const h = await getJson("/api/hosts/" + encodeURIComponent(hostname));
        info.textContent = hostState(h) + " · agent " + (h.agent_version || "?") +
          " · interval " + (h.interval_ms ? h.interval_ms / 1000 + " s" : "?") +
          " · clock offset " + h.clock_offset_ms + " ms · dropped batches " + h.dropped_batches_total;
        info.classList.toggle("bad", !h.online);
        heading.classList.toggle("offline", !h.online);
      } catch (e) {
        state.errors++;
        info.textContent = e.message;
        info.classList.add("bad");
      }
      setTimeout(pollHost, POLL_HOSTS_MS);
    }

    async function loadCommands() {
      try {
        const rows = (await getJson("/api/commands?limit=20&host=" + encodeURIComponent(hostname))).commands;
        cmdTable.replaceChildren(commandRows(rows, false));
      } catch (e) {
        state.errors++;
        cmdTable.replaceChildren(el("caption", { text: "cannot load the commands: " + e.message }));
      }
    }

    window.addEventListener("resize", () => {
      for (const c of charts) c.setSize({ width: width(), height: 180 });
    });
    loadSeries();
    pollHost();
    loadCommands();
    setInterval(() => { if (!zoom) loadSeries(); loadCommands(); }, POLL_SERIES_MS);
  }

  // ---- commands ----

  function commandRows(rows, withHost) {
    const frag = document.createDocumentFragment();
    const cols = ["When", "Operator", ...(withHost ? ["Host"] : []), "Command", "Outcome", "Exit", "Duration"];
    frag.append(el("thead", {}, el("tr", {}, ...cols.map((c) => el("th", { scope: "col", text: c })))));
    const body = el("tbody");
    if (rows.length === 0) body.append(el("tr", {}, el("td", { colspan: String(cols.length), text: "No commands yet." })));
    for (const r of rows) {
      const outcome = r.outcome || "pending";
      const ok = r.outcome === "exited" && r.exit_code === 0;
      const exit = r.exit_code !== null ? String(r.exit_code) : r.signal !== null ? "signal " + r.signal : "–";
      const cells = [
        fmtTime(r.time_unix_ms), r.operator, ...(withHost ? [r.hostname] : []),
        r.argv.join(" "), outcome + (r.message ? ": " + r.message : ""), exit,
        r.finished_unix_ms ? (r.duration_ms / 1000).toFixed(2) + " s" : "–",
      ];
      const row = el("tr", { class: r.outcome ? (ok ? "ok" : "failed") : "pending" });
      cells.forEach((c, i) => {
        const td = el("td", { text: c });
        if (withHost && i === 2) {
          td.textContent = "";
          td.append(el("a", { href: "/host/" + encodeURIComponent(c), text: c }));
        }
        row.append(td);
      });
      body.append(row);
    }
    frag.append(body);
    return frag;
  }

  function commandsPage(main) {
    const table = el("table", { class: "commands" });
    main.append(el("h1", { text: "Commands" }),
      el("p", { class: "summary", text: "Who ran what, where, and how it ended (read-only)." }),
      el("div", { class: "scroll" }, table));
    async function poll() {
      try {
        table.replaceChildren(commandRows((await getJson("/api/commands?limit=200")).commands, true));
        setStatus("updated " + new Date().toLocaleTimeString());
      } catch (e) {
        state.errors++;
        setStatus("cannot update: " + e.message, true);
      }
      setTimeout(poll, POLL_SERIES_MS);
    }
    poll();
  }

  async function start() {
    performance.mark("script-start");
    const main = document.getElementById("main");
    // The fleet page's first hosts answer is asked for together with the
    // metrics, not after them: one round trip fewer before the table.
    const path = location.pathname;
    const page = path.startsWith("/host/") ? "host" : path === "/commands" ? "commands" : "fleet";
    const firstHosts = page === "fleet" ? getJson(HOSTS_PATH, true, fromRows) : null;
    // Its failure is the first poll's to report (it awaits this promise).
    if (firstHosts) firstHosts.catch(() => {});
    try {
      await loadMetrics();
    } catch (e) {
      const hint = e.status === 401 ? " (log in with the URL `monitorctl dashboard` prints)" : "";
      setStatus("cannot reach the server: " + e.message + hint, true);
      main.append(el("p", { class: "bad", text: e.message + hint }));
      return;
    }
    if (page === "host") hostPage(main);
    else if (page === "commands") { document.title = "monitor: commands"; commandsPage(main); }
    else { document.title = "monitor: fleet"; fleetPage(main, firstHosts); }
  }

  start();
})();
