// The steel-defect prediction page: upload frames, show each one's defects over it, tune
// thresholds, download. ES modules, no build step. All masks come from the server (the same
// post-processing as inference.py); this file only decodes their RLE, paints them and keeps the
// page's state.

import { api, jsonBody, send } from "./api.js";
import { $, download, el } from "./dom.js";
import { composite } from "./overlay.js";
import { decodeRle } from "./rle.js";

const UPLOAD_CHUNK = 4; // files per request: progress shows early, requests stay small

const state = {
  model: null,
  classes: [], // [{class_id, name, color}]
  defaults: {}, // class_id -> {threshold, min_component, min_area, cls_threshold, top_threshold}
  overrides: {}, // class_id -> fields that differ from the defaults
  visible: {}, // class_id -> bool
  items: [], // [{key, name, status: "pending"|"ready"|"error", result, error, masks}]
  selected: null,
  nextKey: 1,
  refreshing: null,
};

function formatArea(pixels) {
  return pixels.toLocaleString("en-US") + " px";
}

function postOverrides() {
  const classes = {};
  for (const [id, fields] of Object.entries(state.overrides)) {
    if (Object.keys(fields).length) classes[id] = fields;
  }
  return { classes };
}

function params(classId) {
  return { ...state.defaults[classId], ...state.overrides[classId] };
}

// ---------- model ----------

async function loadModel() {
  const line = $("model-line");
  try {
    const model = await (await api("/api/model")).json();
    state.model = model;
    state.classes = model.classes;
    for (const c of model.classes) {
      state.defaults[c.class_id] = model.postprocessing.classes[c.class_id];
      state.visible[c.class_id] = true;
    }
    const parts = [model.ensemble.segmenters];
    const classifiers = model.ensemble.classifiers;
    if (classifiers) parts.push(classifiers.includes("classifier") ? classifiers : `classifier ${classifiers}`);
    if ((model.heads || []).length) parts.push(`classification head ${model.heads.join(" + ")}`);
    parts.push(model.device);
    if (model.tta.length) parts.push(`TTA ${model.tta.join(", ")}`);
    line.textContent = parts.join(" · ");
    line.dataset.state = "ready";
    renderProvenance(model.provenance);
    const mb = (model.limits.max_file_bytes / 2 ** 20).toFixed(0);
    $("limits-note").textContent = `1600×256 frames · JPEG, PNG, BMP or TIFF · up to ${mb} MB each`;
    renderModelDetails(model);
    buildClassRows();
  } catch (error) {
    line.textContent = `model unavailable: ${error.message}`;
    line.dataset.state = "error";
  }
}

// What the model was trained on, and the server's warning when it is not fit for real steel.
function renderProvenance(provenance) {
  $("model-trained").textContent = provenance.summary;
  const banner = $("model-warning");
  const warning = provenance.warning;
  banner.hidden = !warning;
  if (!warning) return;
  banner.dataset.level = warning.level;
  banner.replaceChildren(el("strong", {}, warning.level === "danger" ? "Warning:" : "Caution:"), warning.message,
    el("span", { class: "files" }, `checkpoints: ${warning.checkpoints.join(", ")}`));
}

// One line per network in words (which fold, what it scored on the frames it never trained on),
// the ensemble's out-of-fold score, and each network's file and config for whoever needs them.
function renderModelDetails(model) {
  const items = model.checkpoints.map((c) =>
    el("li", { class: "network" }, el("strong", {}, c.title), ` — ${c.validation}`,
      el("div", { class: "muted small" }, c.summary),
      el("div", { class: "muted small path", title: c.path }, c.path)));
  const oof = model.provenance.out_of_fold;
  const words = oof || "no out-of-fold score recorded (a threshold search records it in the checkpoints)";
  const together = el("p", { class: "oof" },
    model.checkpoints.length > 1 ? `Together, ${words}` : words[0].toUpperCase() + words.slice(1));
  const configs = model.checkpoints.map((c) =>
    el("details", {}, el("summary", {}, `config of ${c.title}`), el("pre", {}, JSON.stringify(c.config, null, 2))));
  $("model-body").replaceChildren(el("ul", { class: "networks" }, ...items), together, ...configs);
}

// ---------- class table and post-processing controls ----------

function buildClassRows() {
  const body = $("classes").querySelector("tbody");
  const post = $("post-table").querySelector("tbody");
  body.replaceChildren();
  post.replaceChildren();
  for (const c of state.classes) {
    const id = c.class_id;
    const toggle = el("input", { type: "checkbox", "data-class": id, "aria-label": `show class ${id}` });
    toggle.checked = state.visible[id];
    toggle.addEventListener("change", () => { state.visible[id] = toggle.checked; paint(); });
    const slider = el("input", { type: "range", min: "0.01", max: "0.99", step: "0.01", "data-class": id,
      "aria-label": `threshold of class ${id}` });
    slider.value = params(id).threshold;
    slider.addEventListener("input", () => setOverride(id, "threshold", Number(slider.value), false));
    slider.addEventListener("change", () => setOverride(id, "threshold", Number(slider.value), true));
    body.append(el("tr", { "data-class": id },
      el("td", {}, toggle),
      el("td", {}, el("span", { class: "swatch", style: `background:${c.color}` }), `${id} · ${c.name}`,
        el("span", { class: "off", hidden: "" }, "off")),
      el("td", { class: "prob" }),
      el("td", { class: "num area" }),
      el("td", { class: "num share" }),
      el("td", { class: "num regions" }),
      el("td", {}, el("div", { class: "threshold" }, slider, el("span", { class: "num tvalue" })),
        el("div", { class: "why-off", hidden: "" }))));

    const number = (field, step, allowEmpty) => {
      const input = el("input", { type: "number", min: "0", step, "data-class": id, "data-field": field });
      const value = params(id)[field];
      input.value = value === null ? "" : value;
      input.placeholder = allowEmpty ? "none" : "0";
      input.addEventListener("change", () => {
        const raw = input.value.trim();
        const parsed = raw === "" ? (allowEmpty ? null : 0) : Number(raw);
        setOverride(id, field, parsed, true);
      });
      return input;
    };
    const gate = number("cls_threshold", "0.01", true);
    if (!state.model.classifiers.length && !(state.model.heads || []).length) gate.disabled = true;
    post.append(el("tr", {},
      el("td", {}, el("span", { class: "swatch", style: `background:${c.color}` }), String(id)),
      el("td", {}, number("min_component", "1", false)),
      el("td", {}, number("min_area", "1", false)),
      el("td", {}, gate),
      el("td", {}, number("top_threshold", "0.01", true))));
  }
  updateControls();
}

function updateControls() {
  for (const c of state.classes) {
    const row = $("classes").querySelector(`tr[data-class="${c.class_id}"]`);
    const p = params(c.class_id);
    row.querySelector(".tvalue").textContent = Number(p.threshold).toFixed(2);
    row.querySelector('input[type="range"]').value = p.threshold;
    const off = row.querySelector(".off");
    // the served thresholds switch it off, and no min_area override of this page turns it back on
    const overridden = state.overrides[c.class_id] && "min_area" in state.overrides[c.class_id];
    const isOff = Boolean(state.model.switched_off[c.class_id] && !overridden);
    off.hidden = !isOff;
    const unlearnt = (state.model.unlearnt || {})[c.class_id];
    off.textContent = unlearnt ? "off · not learnt yet" : "off";
    off.title = unlearnt
      ? `not learnt yet: on its ${unlearnt.defect_images} out-of-fold frames with this class the model ` +
        `never reached ${unlearnt.lowest_threshold.toFixed(2)} (highest ${unlearnt.peak_on_defects.toFixed(2)}). ` +
        "It needs more labelled frames of this class (the Label page)."
      : "min area is larger than a frame: the threshold search found no gain for this class. " +
        "Lower it under 'Post-processing per class' to see its masks.";
    // An off class's threshold changes nothing: its slider is disabled, and says why.
    const slider = row.querySelector('input[type="range"]');
    slider.disabled = isOff;
    slider.title = isOff ? off.title : "";
    row.querySelector(".threshold").title = slider.title; // a disabled input shows no tooltip of its own
    const why = row.querySelector(".why-off");
    why.hidden = !isOff;
    why.textContent = !isOff ? "" : unlearnt ? "not learnt yet: needs more labelled frames of this class"
      : "switched off by the threshold search: lower its min area to see it";
    why.title = off.title;
  }
}

function setOverride(classId, field, value, everyImage) {
  const fields = { ...state.overrides[classId] };
  if (value === state.defaults[classId][field]) delete fields[field];
  else fields[field] = value;
  state.overrides[classId] = fields;
  updateControls();
  scheduleRefresh(everyImage);
}

function resetThresholds() {
  state.overrides = {};
  buildClassRows();
  scheduleRefresh(true);
}

// ---------- re-thresholding (no network run on the server) ----------

let refreshTimer = null;
function scheduleRefresh(everyImage) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refresh(everyImage), everyImage ? 0 : 80);
}

async function refresh(everyImage) {
  const ready = state.items.filter((item) => item.status === "ready");
  const current = ready.find((item) => item.key === state.selected);
  const targets = everyImage ? [current, ...ready.filter((i) => i !== current)] : [current];
  const token = {};
  state.refreshing = token;
  $("viewer").dataset.state = "refreshing";
  for (const item of targets.filter(Boolean)) {
    if (state.refreshing !== token) return; // a newer slider position took over
    try {
      await reapply(item);
    } catch (error) {
      item.status = "error";
      item.error = error.message;
    }
    renderThumb(item);
    if (item.key === state.selected) renderSelected();
  }
  if (state.refreshing === token) $("viewer").dataset.state = "ready";
}

function setResult(item, result) {
  item.result = result;
  item.masks = result.classes.map((c) => decodeRle(c.rle, result.width, result.height));
}

// ---------- upload ----------

async function addFiles(files) {
  files = Array.from(files);
  if (!files.length) return;
  const maxBytes = state.model ? state.model.limits.max_file_bytes : Infinity;
  const items = files.map((file) => ({ key: state.nextKey++, name: file.name, file, status: "pending" }));
  state.items.push(...items);
  for (const item of items) {
    if (item.file.size > maxBytes) {
      item.status = "error";
      item.error = `${item.name}: ${(item.file.size / 2 ** 20).toFixed(1)} MB is over the ` +
        `${(maxBytes / 2 ** 20).toFixed(0)} MB limit`;
    }
  }
  if (state.selected === null) state.selected = items[0].key;
  renderBatch();
  const queue = items.filter((item) => item.status === "pending");
  for (let start = 0; start < queue.length; start += UPLOAD_CHUNK) {
    const chunk = queue.slice(start, start + UPLOAD_CHUNK);
    const form = new FormData();
    for (const item of chunk) form.append("files", item.file, item.name);
    try {
      const response = await send("/api/predict", { method: "POST", body: form });
      const body = await response.json();
      const entries = body.images || chunk.map(() => ({ error: { message: body.detail || response.statusText } }));
      chunk.forEach((item, i) => {
        const entry = entries[i];
        if (entry.error) {
          item.status = "error";
          item.error = entry.error.message;
        } else {
          item.status = "ready";
          item.file = null; // the server keeps the frame; let the browser free it
          setResult(item, entry);
        }
      });
      const changed = Object.keys(postOverrides().classes).length;
      if (changed) await Promise.all(chunk.filter((i) => i.status === "ready").map(reapply));
    } catch (error) {
      for (const item of chunk) {
        item.status = "error";
        item.error = `upload failed: ${error.message}`;
      }
    }
    renderBatch();
  }
}

async function reapply(item) {
  const response = await api(`/api/results/${item.result.id}/postprocess`, jsonBody(postOverrides()));
  setResult(item, await response.json());
}

async function addExample(name) {
  const blob = await (await api(`/api/examples/${encodeURIComponent(name)}`)).blob();
  await addFiles([new File([blob], name, { type: blob.type || "image/jpeg" })]);
}

async function loadExamples() {
  try {
    const names = await (await api("/api/examples")).json();
    $("example-buttons").replaceChildren(...names.map((name) =>
      el("button", { type: "button", "data-example": name, onclick: () => addExample(name) },
        name.replace(/\.[^.]+$/, ""))));
  } catch (_) {
    $("example-buttons").textContent = "(examples unavailable)";
  }
}

// ---------- rendering ----------

function renderBatch() {
  const list = $("thumbs");
  $("batch").hidden = state.items.length === 0;
  $("viewer").hidden = state.items.length === 0;
  const ready = state.items.filter((i) => i.status === "ready").length;
  const failed = state.items.filter((i) => i.status === "error").length;
  const pending = state.items.length - ready - failed;
  $("batch-count").textContent = `${ready} ready` + (pending ? `, ${pending} in progress` : "") +
    (failed ? `, ${failed} failed` : "");
  $("download-csv").disabled = ready === 0;
  list.replaceChildren(...state.items.map(thumbNode));
  renderSelected();
}

function thumbNode(item) {
  const node = el("li", { class: "thumb", "data-key": item.key, onclick: () => select(item.key) });
  fillThumb(node, item);
  return node;
}

function renderThumb(item) {
  const node = $("thumbs").querySelector(`li[data-key="${item.key}"]`);
  if (node) fillThumb(node, item);
}

function fillThumb(node, item) {
  node.className = "thumb" + (item.key === state.selected ? " selected" : "") + (item.status === "error" ? " error" : "");
  node.dataset.status = item.status;
  const chips = el("div", { class: "chips" });
  let status = item.status === "pending" ? "predicting…" : item.status === "error" ? "failed" : "no defect";
  if (item.status === "ready") {
    const found = item.result.classes.filter((c) => c.area > 0);
    for (const c of found) {
      const color = state.classes.find((k) => k.class_id === c.class_id).color;
      chips.append(el("span", { class: "chip", style: `background:${color}`, title: `class ${c.class_id}` }));
    }
    if (found.length) status = `class ${found.map((c) => c.class_id).join(", ")}`;
  }
  chips.append(el("span", { class: "status" }, status));
  const image = item.status === "ready" ? el("img", { src: `/api/results/${item.result.id}/image.jpg`, alt: "" })
    : el("img", { alt: "" });
  node.replaceChildren(image, el("div", { class: "name", title: item.name }, item.name), chips);
}

function select(key) {
  state.selected = key;
  for (const node of $("thumbs").children) node.classList.toggle("selected", Number(node.dataset.key) === key);
  renderSelected();
}

function renderSelected() {
  const item = state.items.find((i) => i.key === state.selected);
  const viewer = $("viewer");
  if (!item) return;
  $("image-title").textContent = item.name;
  const error = $("image-error");
  error.hidden = item.status !== "error";
  error.textContent = item.error || "";
  $("stage-scroll").hidden = item.status !== "ready";
  $("download-mask").disabled = item.status !== "ready";
  if (item.status !== "ready") {
    $("image-meta").textContent = item.status === "pending" ? "predicting…" : "";
    viewer.dataset.state = item.status;
    fillTable(null);
    return;
  }
  const r = item.result;
  $("image-meta").textContent = `${r.width}×${r.height} · ${r.seconds.toFixed(2)} s per image`;
  const frame = $("frame");
  const source = `/api/results/${r.id}/image.jpg`;
  if (frame.getAttribute("src") !== source) frame.setAttribute("src", source);
  fillTable(r);
  paint();
  if (viewer.dataset.state !== "refreshing") viewer.dataset.state = "ready";
}

function fillTable(result) {
  for (const c of state.classes) {
    const row = $("classes").querySelector(`tr[data-class="${c.class_id}"]`);
    const entry = result && result.classes.find((k) => k.class_id === c.class_id);
    row.querySelector(".prob").replaceChildren(entry ? el("div", { class: "bar-cell" },
      el("div", { class: "pbar", title: entry.probability_source === "classifier" ? "classifier" : "highest pixel probability" },
        el("span", { style: `width:${(100 * entry.probability).toFixed(1)}%` })),
      el("span", { class: "num" }, entry.probability.toFixed(3))) : "");
    row.querySelector(".area").replaceChildren(entry ? formatArea(entry.area) : "",
      ...(entry && entry.removed ? [el("div", { class: "removed" }, removedText(entry.removed))] : []));
    row.querySelector(".share").textContent = entry ? `${entry.area_percent.toFixed(2)} %` : "";
    row.querySelector(".regions").textContent = entry ? String(entry.components) : "";
  }
}

// Why a mask is empty although its peak passed the threshold, with the numbers.
function removedText(why) {
  const over = `peak ${why.peak.toFixed(2)} over ${why.threshold.toFixed(2)}, but`;
  const px = (n) => n.toLocaleString("en-US");
  switch (why.by) {
    case "min_area":
      return `${over} its ${px(why.pixels)} px are under min area ${px(why.limit)}: removed`;
    case "min_component":
      return `${over} its ${px(why.pixels)} px lie in regions under min region ${px(why.limit)} px ` +
        `(the largest ${px(why.largest)} px): removed`;
    case "cls_threshold":
      return `${over} the classifier's ${why.value.toFixed(2)} is under its gate ${why.limit.toFixed(2)}: removed`;
    case "top_threshold":
      return `${over} under the top gate ${why.limit.toFixed(2)}: removed`;
    default:
      return `${over} the class is off: no mask`;
  }
}

function paint() {
  const item = state.items.find((i) => i.key === state.selected);
  if (!item || item.status !== "ready") return;
  const { width, height } = item.result;
  const overlay = $("overlay");
  overlay.width = width;
  overlay.height = height;
  const context = overlay.getContext("2d");
  const image = context.createImageData(width, height);
  const layers = state.classes.map((c, index) => ({
    mask: item.masks[index], color: c.color, alpha: 1, visible: state.visible[c.class_id],
  }));
  const painted = composite(image.data, layers, width, height);
  context.putImageData(image, 0, 0);
  overlay.dataset.painted = String(painted);

  const boxes = $("boxes");
  boxes.width = width;
  boxes.height = height;
  const pen = boxes.getContext("2d");
  if ($("show-boxes").checked) {
    pen.lineWidth = 2;
    for (const entry of item.result.classes) {
      if (!state.visible[entry.class_id]) continue;
      pen.strokeStyle = state.classes.find((k) => k.class_id === entry.class_id).color;
      for (const [x, y, w, h] of entry.boxes) pen.strokeRect(x - 1, y - 1, w + 2, h + 2);
    }
  }
}

// ---------- downloads ----------

async function downloadCsv() {
  const ids = state.items.filter((i) => i.status === "ready").map((i) => i.result.id);
  try {
    const response = await api("/api/submission", jsonBody({ ids, ...postOverrides() }));
    download(await response.blob(), "submission.csv");
  } catch (error) {
    alert(`CSV download failed: ${error.message}`);
  }
}

async function downloadMask() {
  const item = state.items.find((i) => i.key === state.selected);
  if (!item || item.status !== "ready") return;
  try {
    const response = await api(`/api/results/${item.result.id}/mask.png`, jsonBody(postOverrides()));
    download(await response.blob(), item.name.replace(/\.[^.]*$/, "") + "_mask.png");
  } catch (error) {
    alert(`mask download failed: ${error.message}`);
  }
}

// ---------- wiring ----------

function wire() {
  const zone = $("dropzone");
  $("file-input").addEventListener("change", (event) => {
    addFiles(event.target.files);
    event.target.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.remove("over"); });
  }
  zone.addEventListener("drop", (event) => addFiles(event.dataTransfer.files));
  $("opacity").addEventListener("input", (event) => { $("overlay").style.opacity = event.target.value; });
  $("show-boxes").addEventListener("change", paint);
  $("actual-size").addEventListener("change", (event) => $("stage").classList.toggle("actual", event.target.checked));
  $("download-csv").addEventListener("click", downloadCsv);
  $("download-mask").addEventListener("click", downloadMask);
  $("reset-thresholds").addEventListener("click", resetThresholds);
  $("clear-batch").addEventListener("click", () => {
    state.items = [];
    state.selected = null;
    renderBatch();
  });
}

window.state = state; // the page's state, for the console and the browser tests

wire();
loadModel();
loadExamples();
