// Tributary's built-in dashboard: plain DOM and SVG, no library, no network beyond this server.
//
// Every refresh reads one snapshot: the first query's `meta.snapshot` is passed to every other
// query of the refresh, so totals, series, late bars and top groups agree with each other.
// Errors are shown in the page: a 4xx next to the control that caused it, a lost connection as
// "reconnecting…" until `/livez` answers again.
"use strict";

const LADDER = ["1s", "10s", "1m", "5m", "15m", "1h", "6h", "1d"];
const PRESETS = { "15m": 15 * 60e3, "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };
const COLORS = ["#2b6cb0", "#2f855a", "#d69e2e", "#6b46c1", "#c05621", "#00838f", "#97266d", "#4a5568"];
const LATE = "late";
const MAX_POINTS = 120;
const TOP_GROUPS = 8;

const $ = (id) => document.getElementById(id);
const state = { views: [], view: null, busy: false, timer: null, refreshed: 0, reconnecting: false };

class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}
class ConnectionLost extends Error {}

function ms(text) {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(String(text).trim());
  if (!m) return null;
  const unit = { ms: 1, s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[m[2]];
  return Number(m[1]) * unit;
}

function utc(t) {
  return new Date(t).toISOString().replace(".000Z", "Z");
}

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// The number as the page shows it: integers whole, others to at most 3 decimals.
function shown(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  return String(Number(value.toFixed(3)));
}

async function api(method, path, body) {
  const headers = {};
  const token = $("token").value.trim();
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (_) {
    throw new ConnectionLost("the server does not answer");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiFailure(response.status, error.code || "http_" + response.status, error.message || response.statusText);
  }
  return data;
}

// ---- errors in the page ----

function clearErrors() {
  for (const node of document.querySelectorAll("[data-error-for]")) node.textContent = "";
  $("general-error").hidden = true;
  $("general-error").textContent = "";
}

// Which control a 4xx is about, from its code and message.
function controlOf(failure) {
  const { status, code, message } = failure;
  if (status === 401 || status === 403) return "token";
  if (code === "unknown_view") return "view";
  if (code === "bad_granularity") return "granularity";
  if (code === "bad_time_range") return "range";
  if (code === "unknown_metric") return "metrics";
  if (code === "bad_group_by" || /group by/.test(message)) return "group_by";
  if (code === "bad_filter" || /filter/.test(message)) return "filters";
  return null;
}

function showFailure(failure) {
  if (failure instanceof ApiFailure && failure.status < 500) {
    const control = controlOf(failure);
    const target = control && document.querySelector(`[data-error-for="${control}"]`);
    if (target) {
      target.textContent = failure.message;
      document.body.dataset.state = "error";
      return;
    }
  }
  const banner = $("general-error");
  banner.hidden = false;
  const kind = (f) => f.code === "view_building" ? "not available yet" : f.status >= 500 ? "server error" : "request refused";
  banner.textContent =
    failure instanceof ApiFailure
      ? `${kind(failure)} (${failure.code}): ${failure.message}`
      : String(failure.message || failure);
  document.body.dataset.state = "error";
}

function lostConnection() {
  if (state.reconnecting) return;
  state.reconnecting = true;
  document.body.dataset.state = "reconnecting";
  $("connection").hidden = false;
  const retry = async () => {
    try {
      const response = await fetch("/livez", { cache: "no-store" });
      if (response.ok) {
        state.reconnecting = false;
        $("connection").hidden = true;
        if (!state.views.length) await loadViews();
        else await refresh();
        return;
      }
    } catch (_) {
      // still down
    }
    setTimeout(retry, 2000);
  };
  setTimeout(retry, 1000);
}

// ---- controls ----

function currentView() {
  return state.views.find((v) => v.name === $("view").value) || null;
}

function selectedMetrics() {
  return [...document.querySelectorAll("#metrics input:checked")].map((i) => i.value);
}

// A filter value as the dimension's type wants it: numbers for int64/float64, true/false for bool.
function typed(view, field, text) {
  const dimension = view && view.dimensions.find((d) => d.name === field);
  const type = dimension ? dimension.type : "string";
  if ((type === "int64" || type === "float64") && text.trim() !== "" && !isNaN(Number(text))) return Number(text);
  if (type === "bool" && (text === "true" || text === "false")) return text === "true";
  return text;
}

function filters() {
  const view = currentView();
  return [...document.querySelectorAll(".filter-row")]
    .map((row) => {
      const field = row.querySelector(".f-field").value;
      const op = row.querySelector(".f-op").value;
      const text = row.querySelector(".f-value").value;
      const filter = { field, op };
      if (op === "in" || op === "not_in") {
        filter.value = text.split(",").map((s) => s.trim()).filter(Boolean).map((v) => typed(view, field, v));
      } else if (op !== "is_null" && op !== "is_not_null") {
        filter.value = typed(view, field, text);
      }
      return filter;
    })
    .filter((f) => f.field);
}

function addFilter(field = "", op = "eq", value = "") {
  const view = currentView();
  const fields = view ? view.dimensions.map((d) => d.name) : [];
  const select = el("select", { class: "f-field", "aria-label": "filter field" }, el("option", { value: "", text: "(field)" }));
  for (const name of fields) select.append(el("option", { value: name, text: name, selected: name === field }));
  const ops = el("select", { class: "f-op", "aria-label": "filter operator" });
  for (const o of ["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "is_null", "is_not_null"]) {
    ops.append(el("option", { value: o, text: o, selected: o === op }));
  }
  const input = el("input", { class: "f-value", "aria-label": "filter value", value, placeholder: "value (a,b for in)" });
  const row = el("div", { class: "filter-row" }, select, ops, input,
    el("button", { type: "button", text: "×", "aria-label": "remove filter", onclick: () => { row.remove(); refresh(); } }));
  for (const control of [select, ops]) control.addEventListener("change", refresh);
  input.addEventListener("change", refresh);
  $("filter-rows").append(row);
}

function chooseView(name) {
  const view = state.views.find((v) => v.name === name) || state.views[0];
  if (!view) return;
  $("view").value = view.name;
  const metrics = $("metrics");
  for (const label of metrics.querySelectorAll("label")) label.remove();
  const error = metrics.querySelector(".error");
  view.metrics
    .filter((m) => m.name !== LATE)
    .forEach((m, i) => {
      const box = el("input", { type: "checkbox", value: m.name, checked: i < 3 });
      box.addEventListener("change", refresh);
      metrics.insertBefore(el("label", { title: m.expression }, box, " " + m.name), error);
    });
  const groupBy = $("group-by");
  groupBy.replaceChildren(el("option", { value: "", text: "(none)" }));
  for (const d of view.dimensions) groupBy.append(el("option", { value: d.name, text: d.name }));
  $("filter-rows").replaceChildren();
  renderViews();
}

function granularityFor(view, from, to) {
  const chosen = $("granularity").value;
  if (chosen !== "auto") return chosen;
  const base = ms(view.granularity);
  for (const g of LADDER) {
    const size = ms(g);
    if (size >= base && size % base === 0 && (to - from) / size <= MAX_POINTS) return g;
  }
  return "1d";
}

// The range as epoch ms: a preset ends at the end of the view's current bucket.
function range(view) {
  const preset = $("range").value;
  const base = ms(view.granularity);
  if (preset === "custom") {
    const from = Date.parse($("from").value + "Z");
    const to = Date.parse($("to").value + "Z");
    return { from: isNaN(from) ? null : from, to: isNaN(to) ? null : to };
  }
  const to = Math.ceil((Date.now() + 1) / base) * base;
  return { from: to - PRESETS[preset], to };
}

// ---- one refresh ----

async function refresh() {
  const view = currentView();
  if (!view || state.reconnecting) return;
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  // Until this refresh and any asked for meanwhile are done (tests wait on it).
  document.body.dataset.busy = "true";
  try {
    await refreshOnce(view);
    state.refreshed += 1;
    document.body.dataset.refreshed = String(state.refreshed);
    document.body.dataset.state = "ready";
  } catch (failure) {
    if (failure instanceof ConnectionLost) lostConnection();
    else showFailure(failure);
  } finally {
    state.busy = false;
    if (state.again) {
      state.again = false;
      setTimeout(refresh, 0);
    } else {
      document.body.dataset.busy = "false";
    }
  }
}

async function refreshOnce(view) {
  const { from, to } = range(view);
  const granularity = granularityFor(view, from ?? 0, to ?? Date.now());
  const metrics = selectedMetrics();
  const groupBy = $("group-by").value;
  const base = { view: view.name, filter: filters() };
  if (from !== null) base.from = utc(from);
  if (to !== null) base.to = utc(to);
  const withLate = [...metrics, LATE];

  // The first answer names the snapshot every other query of this refresh reads.
  const totalsQuery = { ...base, granularity: "all", metrics: withLate };
  const totals = await api("POST", "/v1/query", totalsQuery);
  const snapshot = totals.meta.snapshot;
  const pinned = (query) => api("POST", "/v1/query", { ...query, snapshot });
  const series = await pinned({ ...base, granularity, metrics: withLate, order_by: [{ field: "time" }] });
  let groups = null;
  let groupSeries = null;
  if (groupBy && metrics.length) {
    groups = await pinned({
      ...base, granularity: "all", group_by: [groupBy], metrics,
      order_by: [{ field: metrics[0], desc: true }], limit: TOP_GROUPS,
    });
    groupSeries = await pinned({ ...base, granularity, group_by: [groupBy], metrics, order_by: [{ field: "time" }] });
  }
  const status = await api("GET", "/v1/status");
  clearErrors();

  renderSeam(view, totals.meta, status, snapshot);
  renderTotals(view, withLate, totals, totalsQuery, snapshot);
  const domain = { from: from ?? firstTime(series), to: to ?? Date.now(), step: ms(granularity) };
  const seamAt = seamTime(view, totals.meta);
  renderCharts(view, metrics, series, groupBy, groups, groupSeries, domain, seamAt);
  renderLate(series, domain, seamAt);
  renderGroups(groupBy, metrics, groups);
  renderStatus(status);
}

function firstTime(answer) {
  const times = answer.rows.map((r) => Date.parse(r.time));
  return times.length ? Math.min(...times) : Date.now() - 3600e3;
}

// Where batch coverage ends in event time: the end of the batch version's newest bucket.
function seamTime(view, meta) {
  const newest = meta.batch && meta.batch.newest_bucket;
  return newest ? Date.parse(newest) + ms(view.granularity) : null;
}

// ---- rendering ----

function renderSeam(view, meta, status, snapshot) {
  const batch = meta.batch;
  $("seam-version").textContent = batch ? `v${batch.version} (${batch.created_at.replace(/\.\d+/, "")})` : "none yet: all speed";
  $("seam-boundary").textContent = batch
    ? Object.entries(batch.boundary).map(([p, w]) => `p${p} < ${w}`).join(", ")
    : "–";
  const seam = seamTime(view, meta);
  $("seam-newest").textContent = seam ? utc(seam) : "–";
  const age = meta.freshness && meta.freshness.age_ms;
  $("seam-freshness").textContent = age === null || age === undefined ? "no speed events" : `${(age / 1e3).toFixed(1)} s`;
  const partitions = (status.speed && status.speed.partitions) || [];
  $("seam-lag").textContent = partitions.length
    ? partitions.map((p) => `p${p.partition}: ${p.lag}${p.stalled ? " (stalled)" : ""}`).join(", ")
    : "–";
  $("seam-snapshot").textContent = snapshot;
  const section = $("seam");
  section.dataset.version = batch ? batch.version : "";
  section.dataset.seam = seam ? utc(seam) : "";
  section.dataset.complete = String(meta.complete);
}

function renderTotals(view, metrics, answer, query, snapshot) {
  const row = answer.rows[0] || {};
  const section = $("totals");
  section.dataset.query = JSON.stringify(query);
  section.dataset.snapshot = snapshot;
  section.replaceChildren(
    ...metrics.map((name) => {
      const value = row[name] === undefined ? null : row[name];
      const metric = view.metrics.find((m) => m.name === name);
      return el("div", { class: "total" + (name === LATE ? " late" : ""), title: metric ? metric.expression : "" },
        el("span", { class: "name", text: name }),
        el("span", { class: "value", "data-total": name, "data-value": JSON.stringify(value), text: shown(value) }));
    }),
  );
}

// Chart sizes in SVG units: the metric charts sit three to a row, the late bars span the page.
const SIZE = { W: 760, H: 190 };
const LATE_SIZE = { W: 1500, H: 150 };
const PAD = { left: 52, right: 12, top: 12, bottom: 22 };
let W = SIZE.W;
let H = SIZE.H;

function scales(domain, max) {
  const span = Math.max(domain.to - domain.from, 1);
  const x = (t) => PAD.left + ((t - domain.from) / span) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (max > 0 ? (v / max) * (H - PAD.top - PAD.bottom) : 0);
  return { x, y };
}

function axes(svg, domain, max, x, y) {
  svg.append(el("svg:line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));
  svg.append(el("svg:line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }));
  for (const v of [0, max / 2, max]) {
    svg.append(el("svg:text", { x: PAD.left - 4, y: y(v) + 4, "text-anchor": "end", text: shown(Number(v.toPrecision(3))) }));
  }
  for (let i = 0; i <= 4; i++) {
    const t = domain.from + ((domain.to - domain.from) * i) / 4;
    const label = new Date(t).toISOString().slice(domain.to - domain.from > 2 * 86400e3 ? 5 : 11, 16).replace("T", " ");
    svg.append(el("svg:text", { x: x(t), y: H - 6, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle", text: label }));
  }
}

function seamMarker(svg, domain, seamAt, x) {
  if (seamAt === null) return;
  const inside = seamAt >= domain.from && seamAt <= domain.to;
  const at = inside ? x(seamAt) : seamAt < domain.from ? x(domain.from) : null;
  if (at === null) return;
  svg.append(el("svg:rect", { class: "speed-zone", x: at, y: PAD.top, width: Math.max(W - PAD.right - at, 0), height: H - PAD.top - PAD.bottom }));
  if (inside) {
    svg.append(el("svg:line", { class: "seam-marker", x1: at, x2: at, y1: PAD.top - 4, y2: H - PAD.bottom, "data-time": utc(seamAt) },
      el("svg:title", { text: `batch coverage ends at ${utc(seamAt)}: newer buckets come from the speed layer only` })));
    // "batch | speed" around the marker, or both left of it when the speed side is too narrow.
    const room = W - PAD.right - at > 44;
    svg.append(el("svg:text", { class: "seam-label", x: at - 4, y: PAD.top + 8, "text-anchor": "end", text: room ? "batch" : "batch | speed" }));
    if (room) svg.append(el("svg:text", { class: "seam-label", x: at + 4, y: PAD.top + 8, text: "speed" }));
  }
}

function numeric(value) {
  return typeof value === "number" ? value : null;
}

function renderCharts(view, metrics, series, groupBy, groups, groupSeries, domain, seamAt) {
  const charts = $("charts");
  charts.replaceChildren();
  const topGroups = groups ? groups.rows.map((r) => r[groupBy]) : null;
  for (const metric of metrics) {
    // One line per top group with a group-by, else one line.
    const lines = new Map();
    if (topGroups) {
      for (const g of topGroups) lines.set(g, []);
      for (const row of groupSeries.rows) {
        if (lines.has(row[groupBy])) lines.get(row[groupBy]).push([Date.parse(row.time), numeric(row[metric])]);
      }
    } else {
      lines.set(metric, series.rows.map((row) => [Date.parse(row.time), numeric(row[metric])]));
    }
    let max = 0;
    for (const points of lines.values()) for (const [, v] of points) if (v !== null) max = Math.max(max, v);
    const { x, y } = scales(domain, max);
    const svg = el("svg:svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, "data-metric": metric, role: "img", "aria-label": `${metric} per bucket` });
    axes(svg, domain, max, x, y);
    seamMarker(svg, domain, seamAt, x);
    const legend = el("div", { class: "legend" });
    let color = 0;
    for (const [name, points] of lines) {
      const stroke = COLORS[color++ % COLORS.length];
      const present = points.filter(([t, v]) => v !== null && t >= domain.from && t < domain.to).sort((a, b) => a[0] - b[0]);
      const d = present.map(([t, v], i) => `${i ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      if (d) svg.append(el("svg:path", { class: "series", d, stroke, "data-points": present.length }));
      if (present.length <= 60) {
        for (const [t, v] of present) {
          svg.append(el("svg:circle", { cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 2, fill: stroke },
            el("svg:title", { text: `${utc(t)}  ${topGroups ? name + ": " : ""}${shown(v)}` })));
        }
      }
      if (topGroups) legend.append(el("span", {}, el("i", { style: `background:${stroke}` }), name === null ? "(null)" : String(name)));
    }
    const metricDef = view.metrics.find((m) => m.name === metric);
    charts.append(el("div", { class: "chart-box" },
      el("h2", {}, metric + " ", el("small", { class: "muted", text: metricDef ? metricDef.expression : "" })), svg, legend));
  }
}

function renderLate(series, domain, seamAt) {
  ({ W, H } = LATE_SIZE);
  try {
    drawLate(series, domain, seamAt);
  } finally {
    ({ W, H } = SIZE);
  }
}

function drawLate(series, domain, seamAt) {
  const bars = series.rows.map((r) => [Date.parse(r.time), numeric(r[LATE]) || 0]).filter(([t]) => t >= domain.from && t < domain.to);
  const max = Math.max(0, ...bars.map(([, v]) => v));
  const { x, y } = scales(domain, max);
  const svg = el("svg:svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, "data-metric": LATE, role: "img", "aria-label": "late events per bucket" });
  axes(svg, domain, max, x, y);
  seamMarker(svg, domain, seamAt, x);
  const width = Math.max(((W - PAD.left - PAD.right) * domain.step) / Math.max(domain.to - domain.from, 1) - 1, 1);
  for (const [t, v] of bars) {
    if (!v) continue;
    svg.append(el("svg:rect", { class: "late-bar", x: x(t).toFixed(1), y: y(v).toFixed(1), width: width.toFixed(1), height: (H - PAD.bottom - y(v)).toFixed(1), "data-value": v },
      el("svg:title", { text: `${utc(t)}: ${v} late` })));
  }
  $("late-chart").replaceChildren(svg);
  const total = bars.reduce((sum, [, v]) => sum + v, 0);
  $("late-note").textContent = `${total} late in range: Kafka received them more than late_after after their event time`;
}

function renderGroups(groupBy, metrics, groups) {
  const section = $("groups");
  section.hidden = !groups;
  if (!groups) return;
  const table = $("groups-table");
  table.replaceChildren(el("tr", {}, el("th", { text: groupBy }), ...metrics.map((m) => el("th", { class: "num", text: m }))));
  for (const row of groups.rows) {
    table.append(el("tr", {}, el("td", { text: row[groupBy] === null ? "(null)" : String(row[groupBy]) }),
      ...metrics.map((m) => el("td", { class: "num", text: shown(row[m]) }))));
  }
}

function renderViews() {
  const list = $("views-list");
  list.replaceChildren(
    ...state.views.map((v) => el("div", { class: "view-entry", "data-view": v.name },
      el("button", { type: "button", text: v.name, onclick: () => { chooseView(v.name); refresh(); } }),
      el("span", { class: "muted", text: ` every ${v.granularity}; by ${v.dimensions.map((d) => d.name).join(", ") || "nothing"}${v.filter ? "; where " + v.filter : ""}` }),
      el("div", { class: "muted", text: v.metrics.map((m) => `${m.name} = ${m.expression}`).join(" · ") }),
      el("div", { class: "muted", text: v.batch ? `batch v${v.batch.version}, ${v.batch.rows} rows` : "no batch version yet" }),
      v.building ? el("div", { class: "muted", "data-building": v.name, text: building(v.building) }) : null)),
  );
}

// A view being rebuilt under a changed definition: what answers meanwhile and how far the run is.
function building(b) {
  const answering = { old_definition: "the previous definition answers what both share", speed_layer: "answered by the speed layer", nothing: "not answered yet" }[b.answering] || b.answering;
  const waiting = b.waiting.length ? `; waiting: ${b.waiting.join(", ")}` : "";
  const p = b.progress;
  const progress = !p ? "; waiting for the next batch run"
    : !p.running ? "; its last run stopped (the next batch run resumes it)"
    : p.fraction !== null && p.fraction !== undefined ? `; ${Math.round(p.fraction * 100)}% built` : "; building";
  return `rebuilding: ${answering}${waiting}${progress}`;
}

function table(headers, rows) {
  return el("table", {}, el("tr", {}, ...headers.map((h) => el("th", { text: h }))),
    ...rows.map((r) => el("tr", {}, ...r.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: c === null || c === undefined ? "–" : String(c) }))))));
}

function renderStatus(status) {
  const body = $("status-body");
  const parts = [];
  const speed = status.speed || {};
  parts.push(el("h3", { text: "speed layer" }));
  parts.push(el("div", { class: "muted", text: `${speed.events ?? 0} events, ${speed.malformed ?? 0} malformed skipped, ${speed.stalls ?? 0} stalls` }));
  parts.push(table(["partition", "next offset", "broker end", "lag", ""],
    (speed.partitions || []).map((p) => [p.partition, p.next, p.high_watermark, p.lag, p.stalled ? el("span", { class: "bad", text: "stalled" }) : ""])));
  const archiver = status.archiver;
  parts.push(el("h3", { text: "archiver" }));
  if (archiver) {
    parts.push(el("div", { class: "muted", text: `${archiver.archived} archived, ${archiver.files} files, ${archiver.quarantined} quarantined (and sent to the DLQ), ${archiver.dlq_failures} DLQ failures` }));
    parts.push(table(["partition", "archived up to"], Object.entries(archiver.progress || {}).map(([p, n]) => [p, n])));
    const reasons = Object.entries(archiver.quarantined_by_reason || {});
    parts.push(el("div", { id: "quarantine" }, reasons.length
      ? table(["quarantine reason", "events"], reasons)
      : el("span", { class: "muted", text: "nothing quarantined" })));
  } else {
    parts.push(el("div", { class: "muted", text: "not run by this process" }));
  }
  const batch = status.batch || {};
  parts.push(el("h3", { text: "batch runs" }));
  parts.push(table(["view", "version", "last run", "outcome", "duration"],
    (batch.views || []).map((v) => [v.view, v.version, v.last_run ? v.last_run.at.replace(/\.\d+/, "") : null,
      v.last_run ? v.last_run.outcome : null, v.last_run ? `${(v.last_run.elapsed_ms / 1e3).toFixed(2)} s` : null])));
  const runs = batch.runs || [];
  if (runs.length) {
    parts.push(el("div", { class: "muted", text: "recent runs (newest first):" }));
    parts.push(table(["at", "view", "by", "outcome", "duration", "rows read"],
      runs.map((r) => [r.at.replace(/\.\d+/, ""), r.view ?? "all", r.trigger, r.outcome + (r.error ? ": " + r.error : ""), `${(r.elapsed_ms / 1e3).toFixed(2)} s`, r.rows_read])));
  }
  body.replaceChildren(...parts);
}

// ---- start ----

async function loadViews() {
  try {
    const answer = await api("GET", "/v1/views");
    clearErrors();
    state.views = answer.views;
    const select = $("view");
    const chosen = select.value;
    select.replaceChildren(...state.views.map((v) => el("option", { value: v.name, text: v.name })));
    chooseView(chosen);
    if (location.pathname === "/views" && !state.scrolled) {
      state.scrolled = true;
      $("views").scrollIntoView();
    }
    await refresh();
  } catch (failure) {
    if (failure instanceof ConnectionLost) lostConnection();
    else showFailure(failure);
  }
}

function schedule() {
  clearInterval(state.timer);
  const seconds = Number($("refresh").value);
  if (seconds > 0) state.timer = setInterval(refresh, seconds * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const token = $("token");
  token.value = localStorage.getItem("tributary.token") || "";
  state.token = token.value.trim();
  token.addEventListener("change", () => {
    // A blur after the value was set by script fires "change" again: reload only on a new token.
    if (token.value.trim() === state.token) return;
    state.token = token.value.trim();
    localStorage.setItem("tributary.token", state.token);
    loadViews();
  });
  $("view").addEventListener("change", () => { chooseView($("view").value); refresh(); });
  $("range").addEventListener("change", () => {
    const custom = $("range").value === "custom";
    $("custom-range").hidden = !custom;
    if (custom && !$("from").value) {
      const now = Date.now();
      $("from").value = new Date(now - 3600e3).toISOString().slice(0, 19);
      $("to").value = new Date(now).toISOString().slice(0, 19);
    }
    refresh();
  });
  for (const id of ["from", "to", "granularity", "group-by"]) $(id).addEventListener("change", refresh);
  $("refresh").addEventListener("change", schedule);
  $("add-filter").addEventListener("click", () => addFilter());
  $("controls").addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
  schedule();
  loadViews();
});
