// The labelling page: open the next frame of the queue with the model's masks, edit them, save.
//
// Stacked canvases, one per concern: the frame (<img>), the masks, the cursor and the polygon in
// progress. Every stroke is saved when it ends (never in the middle of one), as the four masks in
// the Severstal RLE on top of the version the page loaded; a 409 answer (another tab saved first)
// is shown, never overwritten silently. A save that fails (a locked database, a dropped network)
// keeps the page on the frame: leaving it saves again first and stays when that fails too, and
// closing the tab asks first. Pointer positions map to image pixels through the mask canvas's
// on-screen rectangle, so strokes land under the pointer at every zoom and scroll.

import { ApiError, api, jsonBody } from "./api.js";
import { $, el } from "./dom.js";
import { MaskEditor } from "./editor.js";
import { initFrameList, markCurrent, refreshFrameList, statusLabel, toggleFrameList } from "./frames.js";
import { doubtText, hintNodes, queueWord } from "./queue.js";
import { composite } from "./overlay.js";
import { decodeRle, encodeRle } from "./rle.js";

const ZOOMS = [0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16];
const RADII = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64];

const state = {
  info: null,
  classes: [],
  frame: null, // the server's state of the open frame
  editor: null,
  visible: [true, true, true, true],
  opacity: [0.55, 0.55, 0.55, 0.55],
  tool: "brush",
  zoom: 1,
  visited: [], // names opened, for "previous"
  polygon: [], // corners of the polygon in progress, image coordinates
  saving: null, // the save in flight (a promise)
  edits: 0, // changes to the open frame (strokes, undo, confirm), counted as they are sent
  savedEdits: 0, // how many of them the server holds: fewer means strokes would be lost on leaving
  conflict: null, // the server's state after a 409
  saveError: null, // why the last failed save failed
  image: null, // ImageData of the mask layer
  pointer: null, // last pointer position, image coordinates
  panning: null,
  spaceHeld: false,
  heat: false, // the heat map of the class in doubt is on (H)
  eventTimes: [], // ms spent handling each pointer event of a stroke (bench/label_page.py reads it)
  saveTimes: [], // ms of each save's round trip
};

// ---------- geometry ----------

function imagePoint(event) {
  const rect = $("mask-layer").getBoundingClientRect();
  return [
    ((event.clientX - rect.left) * state.frame.width) / rect.width,
    ((event.clientY - rect.top) * state.frame.height) / rect.height,
  ];
}

function setZoom(zoom, anchor = null) {
  const scroll = $("label-scroll");
  const { width, height } = state.frame || { width: 1600, height: 256 };
  const before = anchor && imagePointAt(anchor);
  state.zoom = zoom;
  const stage = $("label-stage");
  stage.style.width = `${width * zoom}px`;
  stage.style.height = `${height * zoom}px`;
  $("zoom-level").textContent = `${Math.round(zoom * 100)} %`;
  if (before) { // keep the image point under the pointer
    const box = scroll.getBoundingClientRect();
    scroll.scrollLeft = before[0] * zoom - (anchor[0] - box.left);
    scroll.scrollTop = before[1] * zoom - (anchor[1] - box.top);
  }
  drawCursor();
}

function imagePointAt([clientX, clientY]) {
  return imagePoint({ clientX, clientY });
}

function fitZoom() {
  const width = state.frame ? state.frame.width : 1600;
  return Math.max(ZOOMS[0], ($("label-scroll").clientWidth - 2) / width);
}

function stepZoom(direction, anchor = null) {
  const next = direction > 0 ? ZOOMS.find((z) => z > state.zoom + 1e-6) : [...ZOOMS].reverse().find((z) => z < state.zoom - 1e-6);
  if (next) setZoom(next, anchor);
}

// ---------- painting ----------

function layers() {
  return state.classes.map((c, i) => ({
    mask: state.editor.masks[i], color: c.color, alpha: state.opacity[i], visible: state.visible[i],
  }));
}

function repaint(rect) {
  if (!state.image) return;
  const { width, height } = state.frame;
  const [x0, y0, x1, y1] = rect;
  composite(state.image.data, layers(), width, height, rect);
  $("mask-layer").getContext("2d").putImageData(state.image, 0, 0, x0, y0, x1 - x0, y1 - y0);
}

function repaintAll() {
  if (state.frame) repaint([0, 0, state.frame.width, state.frame.height]);
}

function drawCursor() {
  const canvas = $("cursor-layer");
  const pen = canvas.getContext("2d");
  pen.clearRect(0, 0, canvas.width, canvas.height);
  const line = 1.5 / state.zoom; // about 1.5 screen pixels at any zoom
  pen.lineWidth = line;
  const doubt = frameDoubt();
  if (state.heat && doubt) { // where the doubt is: a ring at its most doubtful pixel, and the box
    const { width, height } = state.frame; // of the class's most doubtful pixels when it is narrow
    const [x0, y0, x1, y1] = doubt.box;
    pen.strokeStyle = "#ffffff";
    pen.setLineDash([6 / state.zoom, 4 / state.zoom]);
    if ((x1 - x0) * (y1 - y0) < 0.25) pen.strokeRect(x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height);
    pen.setLineDash([]);
    pen.beginPath();
    pen.arc(doubt.at[0] * width, doubt.at[1] * height, 14 / state.zoom, 0, 2 * Math.PI);
    pen.stroke();
  }
  if (state.polygon.length) {
    pen.strokeStyle = "#ffffff";
    pen.setLineDash([4 / state.zoom, 3 / state.zoom]);
    pen.beginPath();
    state.polygon.forEach(([x, y], i) => (i ? pen.lineTo(x, y) : pen.moveTo(x, y)));
    if (state.pointer) pen.lineTo(...state.pointer);
    pen.stroke();
    pen.setLineDash([]);
  }
  if (!state.pointer || state.panning || state.spaceHeld) return;
  const [x, y] = state.pointer;
  if (state.tool === "brush" || state.tool === "eraser") {
    // the true footprint: pixels whose centre is within the radius
    pen.strokeStyle = "#000000";
    pen.beginPath();
    pen.arc(x, y, state.editor.radius, 0, 2 * Math.PI);
    pen.stroke();
    pen.strokeStyle = state.tool === "eraser" ? "#ffffff" : state.classes[state.editor.classIndex].color;
    pen.beginPath();
    pen.arc(x, y, Math.max(0, state.editor.radius - line), 0, 2 * Math.PI);
    pen.stroke();
  } else {
    pen.strokeStyle = "#ffffff";
    pen.beginPath();
    pen.moveTo(x - 6 / state.zoom, y); pen.lineTo(x + 6 / state.zoom, y);
    pen.moveTo(x, y - 6 / state.zoom); pen.lineTo(x, y + 6 / state.zoom);
    pen.stroke();
  }
}

// ---------- the open frame ----------

function showError(message, kind = "") {
  const box = $("page-error");
  box.hidden = !message;
  box.textContent = message || "";
  box.dataset.kind = message ? kind : "";
}

function unsaved() {
  return Boolean(state.frame) && state.edits > state.savedEdits;
}

async function openFrame(name, remember = true) {
  if (!name) {
    $("frame-name").textContent = "Every frame is labelled or skipped";
    return;
  }
  await flushSave();
  setSaveState("idle", state.frame ? state.frame.version : 0, `opening ${name}…`);
  let frame;
  try {
    frame = await (await api(`/api/label/frames/${encodeURIComponent(name)}`)).json();
  } catch (error) {
    showError(`${name}: ${error.message}`);
    return;
  }
  showError(null);
  state.frame = frame;
  // the address names the open frame: a reload or a shared link opens it again (?frame=NAME)
  history.replaceState(null, "", `?frame=${encodeURIComponent(name)}`);
  markCurrent(name);
  state.edits = 0;
  state.savedEdits = 0;
  state.conflict = null;
  $("conflict").hidden = true;
  state.polygon = [];
  const { width, height } = frame;
  for (const id of ["mask-layer", "cursor-layer"]) {
    $(id).width = width;
    $(id).height = height;
  }
  state.image = $("mask-layer").getContext("2d").createImageData(width, height);
  const masks = frame.masks.map((rle) => decodeRle(rle, width, height));
  if (!state.editor || state.editor.width !== width || state.editor.height !== height) {
    const keep = state.editor;
    state.editor = new MaskEditor(width, height, state.classes.length, repaint);
    if (keep) Object.assign(state.editor, { radius: keep.radius, classIndex: keep.classIndex, exclusive: keep.exclusive });
  }
  state.editor.load(masks);
  $("label-frame").src = `/api/label/frames/${encodeURIComponent(name)}/image`;
  if (remember && state.visited[state.visited.length - 1] !== name) state.visited.push(name);
  history.replaceState(null, "", `?frame=${encodeURIComponent(name)}`);
  renderFrame();
  setSaveState("idle", frame.version);
  prefetchNext(name);
}

// Open the queue's next frame on the server in the background, so that its pre-label (a network
// run, a second or two on a CPU) is ready when the labeller gets there.
let prefetched = null;
async function prefetchNext(name) {
  if (!state.info || !state.info.model) return;
  try {
    const next = (await (await api(`/api/label/next?after=${encodeURIComponent(name)}`)).json()).name;
    if (next && next !== prefetched) {
      prefetched = next;
      await api(`/api/label/frames/${encodeURIComponent(next)}`);
    }
  } catch (_) { /* only a head start: the real open reports any error */ }
}

// The queue's word on the open frame: the class in doubt, its peak and threshold, where (or null).
function frameDoubt() {
  const queue = state.frame && state.frame.queue;
  return (queue && queue.detail && queue.detail.doubt) || null;
}

function renderDoubt() {
  const frame = state.frame;
  const doubt = frameDoubt();
  $("doubt-line").hidden = !doubt;
  const layer = $("doubt-layer");
  if (!doubt) {
    layer.hidden = true;
    return;
  }
  $("doubt-text").textContent = doubtText(frame, state.classes, state.info ? state.info.stats.queue.size : 0);
  const toggle = $("doubt-heat");
  const model = Boolean(state.info && state.info.model);
  toggle.disabled = !model;
  $("doubt-heat-label").title = model ? "a faint map of the class's probability, up to its threshold (H)"
    : "the heat map needs the model: start the page with --postprocessing (or promote a version)";
  toggle.checked = state.heat && model;
  const source = `/api/label/frames/${encodeURIComponent(frame.name)}/doubt.png?class_id=${doubt.class_id}`;
  if (toggle.checked && layer.getAttribute("src") !== source) layer.setAttribute("src", source);
  layer.hidden = !toggle.checked;
}

function setHeat(on) {
  state.heat = on;
  renderDoubt();
  drawCursor();
}

function renderFrame() {
  const frame = state.frame;
  $("frame-name").textContent = frame.name;
  const chip = $("frame-status");
  // The model ran but found no defect (most frames of a line): "pre-labelled" would promise masks
  // that are not there; "pre-labelled" saved by a labeller is masks not yet confirmed: in progress.
  const proposedNothing = Boolean(frame.proposal) && frame.proposal.every((rle) => !rle);
  const [text, kind] = statusLabel({ status: frame.status, version: frame.version,
    proposed: Boolean(frame.proposal), classes: proposedNothing ? [] : [0] });
  chip.textContent = text;
  chip.dataset.status = kind;
  const parts = [`${frame.width}×${frame.height}`, `version ${frame.version}`];
  if (frame.proposal_model) parts.push(`${proposedNothing ? "checked" : "pre-labelled"} by ${frame.proposal_model}`);
  if (frame.queue) parts.push(`queue score ${frame.queue.score.toFixed(2)}`);
  $("frame-meta").textContent = parts.join(" · ");
  renderDoubt();
  for (const [i, c] of state.classes.entries()) {
    const origin = frame.origins[i];
    const node = $("class-bar").querySelector(`[data-class="${c.class_id}"] .origin`);
    // an empty mask kept empty (drawn on nothing, or an empty proposal accepted) says nothing worth a label
    const quiet = !frame.masks[i] && (origin === "drawn" || origin === "accepted");
    if (node) node.textContent = origin && !quiet ? origin : "";
  }
  $("prev").disabled = state.visited.length < 2;
}

function setSaveState(kind, version, text) {
  const node = $("save-state");
  node.dataset.state = kind;
  node.dataset.version = String(version);
  node.textContent = text || { idle: `version ${version}`, saving: "saving…", saved: `saved · version ${version}`,
    conflict: "not saved: conflict", error: "not saved" }[kind];
}

// ---------- saving ----------

function strokeStatus() {
  const status = state.frame.status;
  return status === "confirmed" || status === "skipped" ? status : "pre-labelled";
}

function currentMasks() {
  const { width, height } = state.frame;
  return state.editor.masks.map((m) => encodeRle(m, width, height));
}

// Save the masks as they are now with `status`; saves run one at a time, in order.
function save(status = strokeStatus(), { force = false } = {}) {
  state.edits += 1;
  if (state.conflict && !force) return Promise.resolve(false);
  const previous = state.saving || Promise.resolve();
  const run = previous.then(async () => {
    if (state.conflict && !force) return false;
    const frame = state.frame;
    const body = { version: frame.version, status, masks: currentMasks() };
    const covers = state.edits; // the masks sent hold every change made so far
    setSaveState("saving", frame.version);
    const started = performance.now();
    try {
      const response = await api(`/api/label/frames/${encodeURIComponent(frame.name)}`, jsonBody(body, "PUT"));
      const saved = await response.json();
      state.saveTimes.push(performance.now() - started);
      if (state.frame && state.frame.name === saved.name) {
        state.frame = saved;
        renderFrame();
      }
      state.savedEdits = Math.max(state.savedEdits, covers);
      setSaveState("saved", saved.version);
      if (["unsaved", "kept"].includes($("page-error").dataset.kind) && !unsaved()) showError(null);
      return true; // the counts refresh when the frame is left (goNext), not on every stroke
    } catch (error) {
      if (error instanceof ApiError && error.status === 409) {
        state.conflict = error.body.current;
        $("conflict-text").textContent = ` ${error.message}`;
        $("conflict").hidden = false;
        setSaveState("conflict", frame.version);
      } else {
        // fetch's own TypeError ("Failed to fetch") means the request never got an answer
        state.saveError = error instanceof TypeError ? "the server could not be reached" : error.message;
        setSaveState("error", frame.version); // short: the reason is in the banner, too long for the head
        showError(`${frame.name}: not saved (${state.saveError}). The strokes stay on the page; ` +
          "the next stroke or leaving the frame saves them again.", "unsaved");
      }
      return false;
    }
  });
  const tracked = run.finally(() => { if (state.saving === tracked) state.saving = null; });
  state.saving = tracked;
  return run;
}

async function flushSave() {
  while (state.saving) await state.saving;
}

async function finish(status, clear = false) {
  if (!state.frame || state.conflict) return;
  if (clear) state.editor.clearAll();
  const ok = await save(status);
  if (ok) await goNext();
}

// Whether the open frame may be left: every change saved, after one more try for any that
// failed. Otherwise the page stays, says so, and keeps the strokes on screen.
async function readyToLeave() {
  await flushSave();
  if (!unsaved()) return true;
  if (!state.conflict && (await save())) return true;
  const why = state.conflict ? "another tab saved it first: choose a copy above"
    : state.saveError;
  showError(`${state.frame.name}: your last changes are not saved (${why}). ` +
    "The page stays on this frame; leaving it tries to save them again.", "kept");
  return false;
}

async function goNext() {
  if (!state.frame || !(await readyToLeave())) return;
  let name;
  try {
    ({ name } = await (await api(`/api/label/next?after=${encodeURIComponent(state.frame.name)}`)).json());
  } catch (error) {
    showError(`the next frame: ${error.message}`);
    return;
  }
  await openFrame(name);
  loadStats();
}

// Open any frame (the frame list's click): the open one's strokes are saved first, as for Next.
async function jumpTo(name) {
  if (state.frame && name === state.frame.name) return;
  if (state.frame && !(await readyToLeave())) return;
  await openFrame(name);
  loadStats();
  refreshFrameList();
}

async function goPrevious() {
  if (state.visited.length < 2 || !(await readyToLeave())) return;
  state.visited.pop();
  await openFrame(state.visited[state.visited.length - 1], false);
}

// ---------- pointer ----------

let drawing = false;

function onPointerDown(event) {
  if (!state.frame || state.conflict) return;
  const stage = $("cursor-layer");
  if (event.button === 1 || (event.button === 0 && state.spaceHeld)) {
    const scroll = $("label-scroll");
    state.panning = { x: event.clientX, y: event.clientY, left: scroll.scrollLeft, top: scroll.scrollTop };
    $("label-stage").classList.add("panning");
    stage.setPointerCapture(event.pointerId);
    event.preventDefault();
    return;
  }
  if (event.button !== 0) return;
  const point = imagePoint(event);
  if (state.tool === "polygon" || state.tool === "polygon-erase") {
    state.polygon.push(point);
    drawCursor();
    return;
  }
  stage.setPointerCapture(event.pointerId);
  drawing = true;
  const started = performance.now();
  state.editor.begin(state.tool === "eraser");
  state.editor.to(...point);
  state.eventTimes.push(performance.now() - started);
}

function onPointerMove(event) {
  if (!state.frame) return;
  if (state.panning) {
    const scroll = $("label-scroll");
    scroll.scrollLeft = state.panning.left - (event.clientX - state.panning.x);
    scroll.scrollTop = state.panning.top - (event.clientY - state.panning.y);
    return;
  }
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  const points = (events.length ? events : [event]).map(imagePoint);
  if (drawing) {
    const started = performance.now();
    for (const point of points) state.editor.to(...point);
    state.eventTimes.push(performance.now() - started);
  }
  state.pointer = points[points.length - 1];
  drawCursor();
}

function onPointerUp(event) {
  if (state.panning) {
    state.panning = null;
    $("label-stage").classList.remove("panning");
    return;
  }
  if (!drawing) return;
  drawing = false;
  state.editor.to(...imagePoint(event));
  if (state.editor.end()) save();
}

function closePolygon() {
  if (state.polygon.length < 3) return;
  const changed = state.editor.polygon(state.polygon, state.tool === "polygon-erase");
  state.polygon = [];
  drawCursor();
  if (changed) save();
}

// ---------- controls ----------

function setTool(tool) {
  state.tool = tool;
  state.polygon = [];
  for (const button of $("tools").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
  }
  drawCursor();
}

function setClass(index) {
  state.editor.classIndex = index;
  for (const node of $("class-bar").children) node.dataset.active = String(Number(node.dataset.index) === index);
  drawCursor();
}

function setRadius(step) {
  const index = RADII.indexOf(state.editor.radius);
  const next = RADII[Math.min(RADII.length - 1, Math.max(0, (index < 0 ? 5 : index) + step))];
  state.editor.radius = next;
  $("brush-size").textContent = `${2 * next} px`;
  drawCursor();
}

function buildClassBar() {
  $("class-bar").replaceChildren(...state.classes.map((c, i) => {
    const pick = el("button", { type: "button", title: `paint class ${c.class_id} (${c.class_id})`, onclick: () => setClass(i) },
      el("span", { class: "swatch", style: `background:${c.color}` }), `${c.class_id} · ${c.name}`);
    const show = el("input", { type: "checkbox", "aria-label": `show class ${c.class_id}` });
    show.checked = state.visible[i];
    show.addEventListener("change", () => { state.visible[i] = show.checked; repaintAll(); });
    const alpha = el("input", { type: "range", min: "0", max: "1", step: "0.05", "aria-label": `opacity of class ${c.class_id}` });
    alpha.value = state.opacity[i];
    alpha.addEventListener("input", () => { state.opacity[i] = Number(alpha.value); repaintAll(); });
    return el("div", { class: "class-chip", "data-class": c.class_id, "data-index": i }, pick, show, alpha,
      el("span", { class: "origin" }));
  }));
}

function onKey(event) {
  const target = event.target;
  if (target instanceof HTMLInputElement && target.type !== "checkbox" && target.type !== "range") return;
  if (target instanceof HTMLSelectElement) return; // the frame list's filter takes its own arrows
  const key = event.key;
  const ctrl = event.ctrlKey || event.metaKey;
  if (ctrl && key.toLowerCase() === "z") {
    event.preventDefault();
    if (event.shiftKey ? state.editor.redo() : state.editor.undo()) save();
    return;
  }
  if (ctrl) return;
  if (key === " ") { state.spaceHeld = true; $("label-stage").classList.add("panning"); event.preventDefault(); return; }
  if (/^[1-4]$/.test(key)) setClass(Number(key) - 1);
  else if (key === "b" || key === "B") setTool("brush");
  else if (key === "e" || key === "E") setTool("eraser");
  else if (key === "p") setTool("polygon");
  else if (key === "P") setTool("polygon-erase");
  else if (key === "[") setRadius(-1);
  else if (key === "]") setRadius(1);
  else if (key === "x" || key === "X") { $("exclusive").checked = !$("exclusive").checked; state.editor.exclusive = $("exclusive").checked; }
  else if (key === "=" || key === "+") stepZoom(1);
  else if (key === "-") stepZoom(-1);
  else if (key === "f" || key === "F") setZoom(fitZoom());
  else if (key === "Escape") { state.polygon = []; drawCursor(); }
  else if (key === "Enter") { if (state.polygon.length) closePolygon(); else finish("confirmed"); }
  else if (key === "0") finish("defect-free", true);
  else if (key === "s" || key === "S") finish("skipped");
  else if (key === "ArrowRight") goNext();
  else if (key === "ArrowLeft") goPrevious();
  else if (key === "l" || key === "L") toggleFrameList();
  else if ((key === "h" || key === "H") && !$("doubt-line").hidden && !$("doubt-heat").disabled) setHeat(!state.heat);
  else return;
  event.preventDefault();
}

async function loadStats() {
  try {
    const info = await (await api("/api/label/info")).json();
    const s = info.stats.by_status;
    const queue = info.stats.queue;
    $("stats-line").textContent = `${info.frames} frames · ${s.confirmed} confirmed · ${s["defect-free"]} defect-free · ` +
      `${s["pre-labelled"]} pre-labelled · ` +
      `${s.unlabelled} unlabelled · ${s.skipped} skipped` +
      (queue.size ? ` · ${queue.left} of ${queue.size} left in the queue` : ` · ${queueWord(info.queue_build)}`);
    $("stats-line").dataset.queue = info.queue_build.state;
    if (state.info) state.info = { ...state.info, stats: info.stats };
    followBuild(info.queue_build);
    return info;
  } catch (error) {
    $("stats-line").textContent = `counts unavailable: ${error.message}`;
    if (state.building) buildPoll = setTimeout(loadStats, 3000); // a build's progress: try again
    return null;
  }
}

// While the queue is built, poll its progress; when it is done, the open frame gets its queue
// entry (the class in doubt) and the list its ranks.
let buildPoll = null;
function followBuild(build) {
  clearTimeout(buildPoll);
  if (build.state === "running") {
    buildPoll = setTimeout(loadStats, 1000);
    state.building = true;
  } else if (state.building) {
    state.building = false;
    refreshFrameList();
    refreshQueueEntry();
  }
}

async function refreshQueueEntry() {
  if (!state.frame) return;
  try {
    const fresh = await (await api(`/api/label/frames/${encodeURIComponent(state.frame.name)}`)).json();
    if (state.frame && fresh.name === state.frame.name && fresh.version === state.frame.version) {
      state.frame = { ...state.frame, queue: fresh.queue, proposal: fresh.proposal, proposal_model: fresh.proposal_model };
      renderFrame();
    }
  } catch (_) { /* the next open shows it */ }
}

function wire() {
  const top = $("cursor-layer");
  top.addEventListener("pointerdown", onPointerDown);
  top.addEventListener("pointermove", onPointerMove);
  top.addEventListener("pointerup", onPointerUp);
  top.addEventListener("pointercancel", onPointerUp);
  top.addEventListener("pointerleave", () => { state.pointer = null; drawCursor(); });
  top.addEventListener("dblclick", (event) => { event.preventDefault(); closePolygon(); });
  top.addEventListener("contextmenu", (event) => event.preventDefault());
  $("label-scroll").addEventListener("wheel", (event) => {
    if (!event.ctrlKey) return;
    event.preventDefault();
    stepZoom(event.deltaY < 0 ? 1 : -1, [event.clientX, event.clientY]);
  }, { passive: false });
  document.addEventListener("keydown", onKey);
  // a promoted version re-scored the frames (train.js): new counts, ranks and, if untouched, pre-labels
  document.addEventListener("label:model-changed", () => { loadStats(); refreshFrameList(); if (state.frame && !state.frame.version && !unsaved()) openFrame(state.frame.name, false); });
  window.addEventListener("beforeunload", (event) => {
    if (!unsaved()) return;
    event.preventDefault(); // the browser asks whether to leave; its own words, ours are ignored
    event.returnValue = true; // browsers before the standard ask only when it is set
  });
  document.addEventListener("keyup", (event) => {
    if (event.key !== " ") return;
    state.spaceHeld = false;
    $("label-stage").classList.remove("panning");
    event.preventDefault(); // a focused button would take the released Space as a click
  });
  // Keys belong to the frame: a clicked button must not keep the focus, or Enter and Space
  // (confirm, pan) would click it again.
  document.addEventListener("click", (event) => {
    const button = event.target.closest && event.target.closest("button");
    if (button) button.blur();
  });
  for (const button of $("tools").querySelectorAll("button")) button.addEventListener("click", () => setTool(button.dataset.tool));
  $("size-down").addEventListener("click", () => setRadius(-1));
  $("size-up").addEventListener("click", () => setRadius(1));
  $("exclusive").addEventListener("change", (event) => { state.editor.exclusive = event.target.checked; });
  $("undo").addEventListener("click", () => { if (state.editor.undo()) save(); });
  $("redo").addEventListener("click", () => { if (state.editor.redo()) save(); });
  $("zoom-fit").addEventListener("click", () => setZoom(fitZoom()));
  $("zoom-1").addEventListener("click", () => setZoom(1));
  $("zoom-in").addEventListener("click", () => stepZoom(1));
  $("zoom-out").addEventListener("click", () => stepZoom(-1));
  $("prev").addEventListener("click", goPrevious);
  $("next").addEventListener("click", goNext);
  $("confirm").addEventListener("click", () => finish("confirmed"));
  $("defect-free").addEventListener("click", () => finish("defect-free", true));
  $("skip").addEventListener("click", () => finish("skipped"));
  $("doubt-heat").addEventListener("change", (event) => setHeat(event.target.checked));
  $("conflict-load").addEventListener("click", () => openFrame(state.frame.name, false));
  $("conflict-keep").addEventListener("click", () => {
    state.frame = { ...state.frame, version: state.conflict.version };
    state.conflict = null;
    $("conflict").hidden = true;
    save(strokeStatus(), { force: true });
  });
}

async function start() {
  wire();
  const info = await loadStats();
  if (!info) return;
  state.info = info;
  state.classes = info.classes;
  const model = info.model;
  const line = $("model-line");
  line.textContent = model
    ? `pre-labels from ${model.summary.segmenters}${model.summary.classifiers ? ` + ${model.summary.classifiers}` : ""} · ${model.version}`
    : "no model yet: frames open empty";
  const hint = $("queue-hint");
  hint.hidden = !info.queue_build.hint;
  if (info.queue_build.hint) hint.replaceChildren(...hintNodes(info.queue_build.hint));
  line.dataset.state = "ready";
  if (info.skipped_files.length) {
    $("skipped-files").hidden = false;
    $("skipped-list").replaceChildren(...info.skipped_files.map((s) => el("li", {}, `${s.name}: ${s.reason}`)));
  }
  buildClassBar();
  initFrameList(state.classes, jumpTo);
  state.editor = new MaskEditor(1600, 256, state.classes.length, repaint);
  setTool("brush");
  setClass(0);
  setRadius(0);
  const wanted = new URLSearchParams(location.search).get("frame");
  const first = wanted || (await (await api("/api/label/next")).json()).name;
  await openFrame(first);
  setZoom(fitZoom());
  $("label-stage").dataset.ready = "1";
}

window.labelPage = state; // the page's state, for the console and the browser tests
window.labelPageDebug = { repaint, repaintAll }; // bench/label_page.py compares the two
start();
