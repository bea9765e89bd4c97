// The labelling page's Train panel: train a version on the labels, follow it, promote versions.
//
// The page never owns a job: the server runs `steel-defect labels train` as a process with a row
// in the labels database, and re-scores the pre-labels and the queue after a promotion. This
// module only polls those (GET /api/label/train, /rescore, /versions), every second while one
// runs and every few seconds otherwise, so a training started in another tab, or found again
// after a server restart, shows up here too.

import { api, jsonBody } from "./api.js";
import { $, el } from "./dom.js";

const FAST_MS = 1000;
const SLOW_MS = 5000;
const STATE_TEXT = {
  none: "not trained yet",
  running: "training…",
  done: "trained",
  failed: "training failed",
  cancelled: "training cancelled",
};

let timer = null;
let lastVersions = "";

const fixed = (value, digits = 3) => (typeof value === "number" ? value.toFixed(digits) : "–");

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 90) return `about ${Math.max(1, Math.round(seconds))} s left`;
  if (seconds < 5400) return `about ${Math.round(seconds / 60)} min left`;
  return `about ${(seconds / 3600).toFixed(1)} h left`;
}

// "train: segmenter fold 1/2, epoch 1/3" from a progress row
export function whereText(t) {
  if (!t.stage) return "starting…";
  const p = t.progress || {};
  if (t.stage === "train") {
    const fold = t.fold === null || t.fold === undefined ? "" : ` fold ${t.fold + 1}/${p.folds ?? "?"}`;
    return `training the ${p.network || "model"}${fold}, epoch ${t.epoch ?? 0}/${p.epochs ?? "?"}`;
  }
  if (t.stage === "distill") {
    return `distilling the line's network: student ${(p.student ?? 0) + 1}/${p.students ?? "?"}, epoch ${t.epoch ?? 0}/${p.epochs ?? "?"}`;
  }
  return { split: "splitting the labelled frames into folds", search: "searching the thresholds out of fold", record: "recording the version" }[t.stage] || t.stage;
}

// "0.612 (empty masks 0.580)" and, per class, the Dice beside empty with "not learnt" marks
function scoreCell(version) {
  const oof = version.out_of_fold || {};
  const cell = el("td", { class: "score" }, el("strong", {}, fixed(oof.mean_dice)), ` vs ${fixed(oof.empty)} for empty masks`);
  const unlearnt = oof.unlearnt || {};
  const classes = el("div", { class: "per-class muted" });
  for (const [c, dice] of Object.entries(oof.per_class || {})) {
    const empty = (oof.empty_per_class || {})[c];
    const off = c in unlearnt;
    const title = off
      ? `class ${c} is not learnt yet: ${unlearnt[c].defect_images} frames with it, peak ${fixed(unlearnt[c].peak_on_defects, 2)} under the lowest threshold ${unlearnt[c].lowest_threshold}`
      : `class ${c}: out-of-fold Dice ${fixed(dice)}, empty masks ${fixed(empty)}`;
    const text = `class ${c}: ${fixed(dice, 2)} vs ${fixed(empty, 2)}${off ? ", not learnt yet" : ""}`;
    classes.append(el("span", { class: off ? "class-score off" : "class-score", title }, text));
  }
  cell.append(classes);
  return cell;
}

function framesText(counts) {
  if (!counts || counts.frames === undefined) return "";
  const per = Object.entries(counts.per_class || {}).map(([c, n]) => `${n} of class ${c}`).join(", ");
  return `${counts.frames} frames (${counts.defect_free} defect-free; ${per})`;
}

function decisionText(v, decision) {
  if (v.promoted) return `Promoted: ${decision}.`;
  if (v.was_promoted) return `Promoted (${decision}); ${v.in_use} is in use since.`;
  return `Not promoted: ${decision}.`;
}

function renderTraining(t) {
  const running = t.state === "running";
  const chip = $("train-state");
  chip.dataset.state = t.state;
  chip.textContent = t.state === "done" && t.version ? `trained ${t.version}` : STATE_TEXT[t.state] || t.state;
  $("train-start").disabled = running;
  $("train-cancel").hidden = !running;
  $("train-progress").hidden = !running;
  if (running) {
    const fraction = Math.max(0, Math.min(1, t.fraction || 0));
    $("train-bar-fill").style.width = `${(fraction * 100).toFixed(1)}%`;
    $("train-bar").setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
    $("train-progress-text").textContent = `${whereText(t)} · ${Math.round(fraction * 100)} %${t.eta_s ? ` · ${duration(t.eta_s)}` : ""}`;
  }
  const result = $("train-result");
  result.replaceChildren();
  result.dataset.state = t.state;
  if (t.state === "done" && t.result) {
    const v = t.result;
    const decision = (v.detail || {}).decision || v.promotion_reason || "";
    result.append(
      el("div", {}, el("strong", {}, v.name), ` out-of-fold Dice ${fixed(v.out_of_fold?.mean_dice)} beside empty masks ${fixed(v.out_of_fold?.empty)}, learnt from ${framesText(v.counts)} in ${Math.round(v.seconds)} s`),
      el("div", { class: v.promoted ? "decision promoted" : "decision kept" }, decisionText(v, decision)),
    );
  } else if (t.state === "failed") {
    result.append(el("div", { class: "decision failed" }, t.error || "failed"));
  } else if (t.state === "cancelled") {
    result.append(el("div", { class: "muted" }, `Cancelled at ${t.finished_at || "?"}; no version recorded.`));
  }
  return running;
}

// When a re-scoring ends, the labelling page (label.js) reloads its counts, list and open frame
let rescoring = null;
function announce(r) {
  const key = `${r.version}:${r.state}`;
  if (rescoring !== null && rescoring !== key && r.state === "done") {
    const line = $("model-line");
    if (line) line.textContent = `pre-labels and queue from ${r.version}, the promoted version`;
    const hint = $("queue-hint"); // "no model yet: train one": there is one now
    if (hint) hint.hidden = true;
    document.dispatchEvent(new CustomEvent("label:model-changed", { detail: { version: r.version } }));
  }
  rescoring = key;
}

function renderRescore(r) {
  announce(r);
  const box = $("rescore");
  box.hidden = r.state === "idle";
  box.dataset.state = r.state;
  const of = r.total ? `${r.done}/${r.total} frames` : "loading the model";
  box.textContent = {
    running: `Re-scoring the pre-labels and the queue with ${r.version}: ${of}${r.eta_s ? `, ${duration(r.eta_s)}` : ""}`,
    done: `Pre-labels and queue from ${r.version}${r.scored !== undefined ? ` (${r.scored} frames re-scored)` : ""}.`,
    failed: r.error || `Re-scoring with ${r.version} failed.`,
    interrupted: `Re-scoring with ${r.version} was interrupted; it starts again.`,
  }[r.state] || "";
  return r.state === "running" || r.state === "interrupted";
}

function renderVersions(data) {
  const key = JSON.stringify(data);
  if (key === lastVersions) return;
  lastVersions = key;
  const body = $("versions-body");
  body.replaceChildren();
  $("versions").hidden = !data.versions.length;
  for (const v of [...data.versions].reverse()) {
    const action = v.promoted
      ? el("span", { class: "in-use", title: v.promotion_reason || "" }, "in use")
      : el("button", { type: "button", class: "quiet small", "data-promote": v.name, onclick: () => promote(v.name) }, "Promote");
    body.append(
      el(
        "tr",
        { "data-version": v.name, "data-promoted": String(v.promoted) },
        el("td", {}, el("strong", {}, v.name)),
        el("td", { class: "muted" }, (v.created_at || "").replace("T", " ").slice(0, 16)),
        el("td", {}, v.recipe),
        el("td", {}, framesText(v.counts)),
        scoreCell(v),
        el("td", {}, action),
      ),
    );
  }
}

async function promote(name) {
  try {
    await api("/api/label/promote", jsonBody({ version: name }));
  } catch (err) {
    showError(err);
  }
  refresh();
}

function showError(err) {
  const box = $("train-error");
  box.hidden = !err;
  box.textContent = err ? err.message : "";
}

async function refresh() {
  clearTimeout(timer);
  let busy = false;
  try {
    const [training, rescore, versions] = await Promise.all(
      ["/api/label/train", "/api/label/rescore", "/api/label/versions"].map((p) => api(p).then((r) => r.json())),
    );
    busy = renderTraining(training) | renderRescore(rescore);
    renderVersions(versions);
    $("train-panel").dataset.ready = "1";
  } catch (err) {
    showError(err);
  }
  timer = setTimeout(refresh, busy ? FAST_MS : SLOW_MS);
}

async function start() {
  showError(null);
  $("train-start").disabled = true;
  try {
    await api("/api/label/train", jsonBody({}));
  } catch (err) {
    showError(err); // a 409 names the training that runs; the poll shows it
  }
  refresh();
}

async function cancel() {
  $("train-cancel").disabled = true;
  try {
    await api("/api/label/train", { method: "DELETE" });
  } catch (err) {
    showError(err);
  }
  $("train-cancel").disabled = false;
  refresh();
}

if ($("train-panel")) {
  $("train-start").addEventListener("click", start);
  $("train-cancel").addEventListener("click", cancel);
  refresh();
}
