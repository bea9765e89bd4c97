// The line's dashboard: live rates from the inspection log, alarms, search, exports, a viewer.
//
// Everything comes from /api/log/* (webapp/dashboard.py). The chart is plain SVG drawn here: a
// plant machine is often offline, so nothing is fetched from a CDN. The page polls every
// REFRESH_MS; a failed poll shows its error and the next one tries again.

import { api } from "./api.js";
import { $, el } from "./dom.js";
import { composite } from "./overlay.js";
import { decodeRle } from "./rle.js";

const REFRESH_MS = 5000;
const W = 1600, H = 256;
const SVG = "http://www.w3.org/2000/svg";

const state = {
  classes: {},       // id -> {name, color}
  span: 3600,        // seconds the chart and tiles cover
  line: "",          // "" = every line
  search: null,      // the active search's parameters, or null for the latest frames
  before: null,      // paging: the last id shown
  refreshed: 0,      // polls done (the browser test waits on it)
};
window.dashboard = state;

async function get(path) {
  return (await api(path)).json();
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// 24-hour times everywhere: a 12-hour clock cut to "HH:MM" read 12:35 … 01:35 across an afternoon.
const CLOCK = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };

function time(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { ...CLOCK, second: "2-digit" });
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], CLOCK);
}

function dateTime(seconds) {
  return new Date(seconds * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "medium", hourCycle: "h23" });
}

function percent(x) {
  return `${(100 * x).toFixed(x && x < 0.01 ? 2 : 1)}%`;
}

function showError(err) {
  const box = $("page-error");
  box.hidden = !err;
  box.textContent = err ? `The log could not be read: ${err.message}` : "";
}

// -- status: watchers and alarms -------------------------------------------------------------

function renderStatus(status) {
  $("log-name").textContent = `log: ${status.log}`;
  const watchers = $("watchers");
  watchers.dataset.state = "ready";
  let late = false;
  watchers.replaceChildren(...(status.watchers.length ? status.watchers.map((w) => {
    const age = status.now - w.heartbeat_at;
    const stale = w.state === "running" && age > 30;
    const behind = w.behind && !stale;  // the server applies the limit (dashboard.py, LAG_LIMIT_S)
    late ||= behind;
    const lag = w.lag_s ?? null;  // absent from logs written before it was recorded
    const backlog = behind
      ? `backlog ${w.backlog} frame${w.backlog === 1 ? "" : "s"}${lag === null ? "" : `, ${lag.toFixed(1)} s behind`}`
      : `backlog ${w.backlog}`;
    // watch --labels-db: the version judging now (its full model string in the tooltip)
    const version = w.version ? ` · model ${w.version}` : "";
    const text = `${w.line}: ${stale ? `no heartbeat for ${Math.round(age)} s` : w.state} · ${backlog} · ${w.judged} judged${version}`;
    const kind = stale || w.state !== "running" ? "down" : behind ? "behind" : "";
    const title = `${w.message || w.source}${w.model ? `\nmodel: ${w.model}` : ""}`;
    return el("span", { class: `watcher ${kind}`, title }, text);
  }) : [el("span", {}, "no watcher has written to this log yet")]));
  document.querySelector("header.bar").classList.toggle("behind", late);
  const select = $("line");
  const known = new Set([...select.options].map((o) => o.value));
  for (const line of status.lines) if (!known.has(line)) select.append(el("option", { value: line }, line));

  const banners = status.open_alarms.map((a) => el("div", { class: "banner", "data-class": a.class_id },
    el("strong", {}, `Alarm, ${a.line}:`),
    `class ${a.class_id} (${state.classes[a.class_id].name}) on ${percent(a.rate)} of the last ${a.frames} frames ` +
    `(limit ${percent(a.threshold)} over ${Math.round(a.window_s / 60)} min), since ${time(a.raised_at)}` +
    (a.notified ? ` · notified: ${a.notified}` : "")));
  for (const w of status.watchers.filter((w) => w.state === "source missing")) {
    banners.push(el("div", { class: "banner", "data-level": "caution" }, el("strong", {}, `${w.line}:`), w.message || "its folder is gone"));
  }
  for (const w of status.watchers.filter((w) => w.model_problem)) {  // a promoted version that did not load
    banners.push(el("div", { class: "banner model-problem", "data-level": "caution" }, el("strong", {}, `${w.line}:`), w.model_problem));
  }
  $("alarms").replaceChildren(...banners);
}

// -- tiles and chart ---------------------------------------------------------------------------

function minutes(seconds) {
  return `${Math.round(seconds / 6) / 10} min`;
}

function renderTiles(aggregates, throughput) {
  const judged = aggregates.frames.judged;
  // The rate over the time observed (since the watcher started or the first frame came, when that
  // is inside the window), labelled with that time: never a part-window divided by the whole.
  const whole = throughput.seconds >= throughput.window - 1;
  const tiles = [
    ["frames judged", judged.toLocaleString()],
    [`per minute (last ${minutes(whole ? throughput.window : throughput.seconds)})`,
      throughput.per_minute === null ? "–" : throughput.per_minute.toFixed(1), null,
      throughput.per_minute === null ? `observed for ${Math.round(throughput.seconds)} s: too short to tell`
        : `${throughput.frames.toLocaleString()} frame${throughput.frames === 1 ? "" : "s"} since ${time(throughput.since)}`],
    ["corrupt / missing", `${aggregates.frames.corrupt} / ${aggregates.frames.missing}`],
    ...Object.entries(aggregates.classes).map(([c, a]) => [
      `class ${c} · ${state.classes[c].name}`, percent(a.rate), state.classes[c].color, `${a.frames} frame${a.frames === 1 ? "" : "s"}`]),
  ];
  $("tiles").replaceChildren(...tiles.map(([label, value, color, note]) => el("div", { class: "tile", "data-label": label },
    el("div", { class: "tile-value" }, value),
    el("div", { class: "tile-label" }, color ? el("span", { class: "swatch", style: `background:${color}` }) : "", label),
    note ? el("div", { class: "tile-note muted" }, note) : "")));
}

function renderChart(rates, start, end) {
  const chart = $("chart");
  const width = chart.clientWidth || 1000, height = 220, left = 46, right = 56, top = 10, bottom = 24;
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const plotW = width - left - right, plotH = height - top - bottom;
  const x = (t) => left + ((t - start) / (end - start)) * plotW;
  const buckets = rates.buckets;
  const frameStep = niceStep(Math.max(1, ...buckets.map((b) => b.frames)), 4, [1, 2, 5], true);
  const steps = Math.max(1, Math.ceil(Math.max(0, ...buckets.map((b) => b.frames)) / frameStep));
  const maxFrames = steps * frameStep;  // whole frames on every tick, none repeated
  // The right axis has round percentages of its own (sharing the left one's grid read 0 … 150%).
  const topRate = Math.max(0.05, ...buckets.flatMap((b) => Object.values(b.classes).map((n) => n / Math.max(1, b.frames))));
  const rateStep = niceStep(topRate, 4, [1, 2, 2.5, 5], false);
  const rateSteps = Math.ceil(topRate / rateStep - 1e-9);
  const rateMax = rateSteps * rateStep;
  const rateDigits = decimals(100 * rateStep);
  const yFrames = (n) => top + plotH - (n / maxFrames) * plotH;
  const yRate = (r) => top + plotH - (r / rateMax) * plotH;
  const nodes = [];
  for (let i = 0; i <= steps; i++) {  // grid and axes
    const y = yFrames(i * frameStep);
    nodes.push(svg("line", { x1: left, x2: width - right, y1: y, y2: y, class: "grid" }));
    const frames = svg("text", { x: left - 6, y: y + 4, class: "axis frames-tick", "text-anchor": "end" });
    frames.textContent = String(i * frameStep);
    nodes.push(frames);
  }
  for (let i = 0; i <= rateSteps; i++) {
    const y = yRate(i * rateStep);
    const rate = svg("text", { x: width - right + 6, y: y + 4, class: "axis rate-tick" });
    rate.textContent = `${(100 * i * rateStep).toFixed(rateDigits)}%`;
    nodes.push(svg("line", { x1: width - right, x2: width - right + 3, y1: y, y2: y, class: "tick" }), rate);
  }
  for (const t of timeTicks(start, end)) {
    const label = svg("text", { x: x(t), y: height - 6, class: "axis time-tick", "text-anchor": "middle" });
    label.textContent = clock(t);
    nodes.push(label);
  }
  const barW = Math.max(1, (plotW * rates.bucket) / (end - start) - 1);
  for (const b of buckets) {
    const width = Math.min(barW, left + plotW - x(b.start));  // the bucket still filling ends at now
    const bar = svg("rect", { x: x(b.start), y: yFrames(b.frames), width: Math.max(0, width), height: top + plotH - yFrames(b.frames), class: "bar-frames" });
    const tip = svg("title");
    tip.textContent = `${time(b.start)}: ${b.frames} frames; ` +
      Object.entries(b.classes).map(([c, n]) => `class ${c} ${n}`).join(", ");
    bar.append(tip);
    nodes.push(bar);
  }
  for (const c of Object.keys(state.classes)) {
    const points = buckets.map((b) => `${x(b.start) + barW / 2},${yRate(b.classes[c] / Math.max(1, b.frames))}`);
    if (points.length) nodes.push(svg("polyline", { points: points.join(" "), class: "rate", stroke: state.classes[c].color, "data-class": c }));
  }
  chart.replaceChildren(...nodes);
}

// The smallest of mantissas x 10^k (k >= 0 when `whole`) that covers `max` in `ticks` steps.
function niceStep(max, ticks, mantissas, whole) {
  let power = 10 ** Math.floor(Math.log10(max / ticks));
  if (whole) power = Math.max(1, power);
  for (;;) {
    for (const m of mantissas) if (m * power * ticks >= max - 1e-12) return m * power;
    power *= 10;
  }
}

function decimals(x) {
  let d = 0;
  while (d < 6 && Math.abs(Math.round(x * 10 ** d) - x * 10 ** d) > 1e-6) d += 1;
  return d;
}

// Time ticks on round local minutes (every 1, 2, 5, 10, 15, 30 min or 1, 2, 3, 4, 6 h), at most 7.
function timeTicks(start, end) {
  const step = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 14400, 21600]
    .find((s) => (end - start) / s <= 7) ?? 21600;
  const offset = -new Date(start * 1000).getTimezoneOffset() * 60;  // local, not UTC, round hours
  const ticks = [];
  for (let t = Math.ceil((start + offset) / step) * step - offset; t <= end; t += step) ticks.push(t);
  return ticks;
}

function renderLegend() {
  $("legend").replaceChildren(
    el("span", {}, el("span", { class: "swatch frames" }), "frames per bucket (left axis)"),
    ...Object.entries(state.classes).map(([c, k]) => el("span", {},
      el("span", { class: "swatch", style: `background:${k.color}` }), `class ${c} rate (right axis)`)));
}

// -- the strip of the latest judged frames, masks drawn over them on the server --------------

let stripIds = "";

async function renderStrip() {
  const p = new URLSearchParams({ status: "judged", limit: 6 });
  if (state.line) p.set("line", state.line);
  const frames = (await get(`/api/log/frames?${p}`)).frames;
  const ids = frames.map((f) => f.id).join(",");
  if (ids === stripIds) return;  // the same frames: keep the images already loaded
  stripIds = ids;
  $("strip").replaceChildren(...frames.map((f) => el("figure", { class: "thumb-card", tabindex: 0, "data-id": f.id,
    onclick: () => openViewer(f.id), onkeydown: (e) => { if (e.key === "Enter") openViewer(f.id); } },
    el("img", { src: `/api/log/frames/${f.id}/thumbnail`, alt: `${f.name} with its masks`, width: 400, height: 64,
      onerror: (e) => e.target.replaceWith(el("div", { class: "thumb-gone" }, "image no longer on disk")) }),
    el("figcaption", {}, el("span", { class: "name" }, f.name), " ", classCell(f)))));
}

// -- search and results ------------------------------------------------------------------------

function searchParams() {
  const p = new URLSearchParams();
  const classes = [...document.querySelectorAll("#class-boxes input:checked")].map((i) => i.value);
  if (classes.length) p.set("classes", classes.join(","));
  const from = $("from").value, to = $("to").value;
  if (from) p.set("start", new Date(from).getTime() / 1000);
  if (to) p.set("end", new Date(to).getTime() / 1000);
  if (Number($("min-area").value) > 1) p.set("min_area", $("min-area").value);
  if (Number($("min-prob").value) > 0) p.set("min_probability", $("min-prob").value);
  if ($("status").value) p.set("status", $("status").value);
  if (state.line) p.set("line", state.line);
  return p;
}

function updateExports() {
  const p = state.search ? new URLSearchParams(state.search) : new URLSearchParams(state.line ? { line: state.line } : {});
  for (const format of ["submission", "summary"]) {
    p.set("format", format);
    $(`export-${format}`).href = `/api/log/export?${p}`;
  }
}

function classCell(frame) {
  if (frame.status !== "judged") return el("span", { class: "muted" }, frame.reason || frame.status);
  const present = frame.classes.filter((c) => c.area > 0);
  if (!present.length) return el("span", { class: "muted" }, "none");
  return el("span", { class: "present" }, ...present.map((c) => el("span", { class: "tag", "data-class": c.class_id },
    el("span", { class: "swatch", style: `background:${state.classes[c.class_id].color}` }),
    `${c.class_id} · ${c.area.toLocaleString()}`)));
}

function renderRows(frames, append) {
  const body = $("results").tBodies[0];
  const rows = frames.map((f) => el("tr", { "data-id": f.id, tabindex: 0, onclick: () => openViewer(f.id), onkeydown: (e) => { if (e.key === "Enter") openViewer(f.id); } },
    el("td", {}, dateTime(f.judged_at)), el("td", {}, f.line), el("td", { class: "name" }, f.name),
    el("td", {}, classCell(f)), el("td", {}, `${Math.round(f.latency_ms)} ms`),
    el("td", { class: `st-${f.status}` }, f.status)));
  if (append) body.append(...rows); else body.replaceChildren(...rows);
}

async function loadRows(append = false) {
  const p = state.search ? new URLSearchParams(state.search) : new URLSearchParams(state.line ? { line: state.line } : {});
  p.set("limit", 25);
  if (append && state.before) p.set("before", state.before);
  const answer = await get(`/api/log/frames?${p}`);
  renderRows(answer.frames, append);
  state.before = answer.next_before;
  $("older").hidden = !answer.next_before;
  const shown = $("results").tBodies[0].rows.length;
  $("result-note").textContent = state.search
    ? `${shown} matching frame${shown === 1 ? "" : "s"} shown, newest first${answer.next_before ? "; more below" : ""}`
    : `the latest frames${state.line ? ` of ${state.line}` : ""}, live`;
}

// -- the viewer: the frame with its masks, drawn by the labelling page's overlay code -----------

async function openViewer(id) {
  const frame = await get(`/api/log/frames/${id}`);
  $("viewer").hidden = false;
  $("viewer-title").textContent = frame.name;
  $("viewer-meta").textContent = `${frame.line} · judged ${dateTime(frame.judged_at)} · ${Math.round(frame.latency_ms)} ms · ${frame.model || ""}`;
  const image = $("viewer-image");
  image.src = `/api/log/frames/${id}/image`;
  image.alt = frame.name;
  image.onerror = () => { $("viewer-meta").textContent += ` · the image is no longer at ${frame.path}`; };
  const canvas = $("viewer-overlay");
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(W, H);
  const layers = frame.classes.map((c) => ({ mask: decodeRle(c.rle, W, H), color: state.classes[c.class_id].color, alpha: 0.45, visible: true }));
  composite(pixels.data, layers, W, H);
  context.putImageData(pixels, 0, 0);
  $("viewer-classes").replaceChildren(...frame.classes.map((c) => el("div", { class: "vc" },
    el("span", { class: "swatch", style: `background:${state.classes[c.class_id].color}` }),
    `class ${c.class_id} · p ${c.probability.toFixed(2)} · ${c.area.toLocaleString()} px · ${c.regions} region${c.regions === 1 ? "" : "s"}`)));
  $("viewer").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

// -- the poll ----------------------------------------------------------------------------------

async function refresh() {
  try {
    const status = await get("/api/log/status");
    if (!Object.keys(state.classes).length) setUp(status.classes);
    renderStatus(status);
    const end = status.now, start = end - state.span;
    const bucket = state.span <= 3600 ? 60 : state.span <= 28800 ? 300 : 900;
    const line = state.line ? `&line=${encodeURIComponent(state.line)}` : "";
    const [aggregates, rates, throughput] = await Promise.all([
      get(`/api/log/aggregates?start=${start}&end=${end}${line}`),
      get(`/api/log/rates?start=${Math.floor(start / bucket) * bucket}&end=${end}&bucket=${bucket}${line}`),
      get(`/api/log/throughput?end=${end}${line}`),
    ]);
    renderTiles(aggregates, throughput);
    renderChart(rates, Math.floor(start / bucket) * bucket, end);
    await renderStrip();
    if (!state.search) await loadRows();
    showError(null);
  } catch (err) {
    console.error(err);
    showError(err);
  }
  state.refreshed += 1;
}

function setUp(classes) {
  state.classes = classes;
  renderLegend();
  $("class-boxes").replaceChildren(...Object.entries(classes).map(([c, k]) => el("label", { class: "check" },
    el("input", { type: "checkbox", value: c }), el("span", { class: "swatch", style: `background:${k.color}` }), `${c} ${k.name}`)));
}

for (const button of document.querySelectorAll("[data-span]")) {
  button.addEventListener("click", () => {
    state.span = Number(button.dataset.span);
    for (const b of document.querySelectorAll("[data-span]")) b.classList.toggle("quiet", b !== button);
    $("span-label").textContent = button.textContent.replace("1 h", "hour");
    refresh();
  });
}
$("line").addEventListener("change", () => { state.line = $("line").value; updateExports(); refresh(); });
$("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.search = searchParams().toString();
  updateExports();
  try { await loadRows(); showError(null); } catch (err) { showError(err); }
});
$("reset").addEventListener("click", () => { state.search = null; updateExports(); refresh(); });
$("older").addEventListener("click", () => loadRows(true).catch(showError));
$("viewer-close").addEventListener("click", () => { $("viewer").hidden = true; });

updateExports();
refresh();
setInterval(refresh, REFRESH_MS);
