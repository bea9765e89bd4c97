// The labelling page's frame list: every frame of the folder with its status, the classes it
// holds, the class the model is least sure of and its queue score, in queue order, filtered by
// status. A click opens the frame (after the open one's strokes are saved), so frames passed
// with Next are never out of reach. GET /api/label/frames answers it.

import { api } from "./api.js";
import { $, el } from "./dom.js";

const list = {
  open: null, // async (name) => opens a frame on the page
  classes: [],
  current: null, // the open frame's name
};

// What the chip says: the database's status, except two cases where the bare word would mislead.
export function statusLabel(frame) {
  if (frame.status === "pre-labelled" && frame.version > 0) return ["in progress", "pre-labelled"];
  if (frame.version === 0 && frame.proposed && !frame.classes.length) {
    return ["model proposes nothing", "nothing-proposed"];
  }
  return [frame.status, frame.status];
}

function swatches(ids) {
  if (!ids.length) return "—";
  const node = el("span", {});
  for (const id of ids) {
    const c = list.classes.find((k) => k.class_id === id);
    node.append(el("span", { class: "swatch", style: `background:${c ? c.color : "#999"}`, title: c ? c.name : "" }), `${id} `);
  }
  return node;
}

function row(frame) {
  const [text, kind] = statusLabel(frame);
  const node = el("tr", { "data-name": frame.name, tabindex: "0", title: `open ${frame.name}` },
    el("td", { class: "num" }, frame.rank === null ? "—" : String(frame.rank + 1)),
    el("td", {}, frame.name),
    el("td", {}, el("span", { class: "status-chip", "data-status": kind }, text)),
    el("td", {}, swatches(frame.classes)),
    el("td", {}, frame.doubt_class ? swatches([frame.doubt_class]) : "—"),
    el("td", { class: "num" }, frame.score === null ? "—" : frame.score.toFixed(2)));
  node.setAttribute("aria-current", String(frame.name === list.current));
  const open = () => list.open(frame.name);
  node.addEventListener("click", open);
  node.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); event.stopPropagation(); open(); }
  });
  return node;
}

export async function refreshFrameList() {
  if ($("frame-list").hidden) return;
  const status = $("frame-list-filter").value;
  try {
    const frames = await (await api(`/api/label/frames${status ? `?status=${encodeURIComponent(status)}` : ""}`)).json();
    $("frame-list-body").replaceChildren(...frames.map(row));
    $("frame-list-count").textContent = `${frames.length}${status ? ` ${status}` : ""}`;
    $("frame-list").dataset.ready = "1";
  } catch (error) {
    $("frame-list-body").replaceChildren(el("tr", {}, el("td", { colspan: "6" }, `the list is unavailable: ${error.message}`)));
  }
}

export function markCurrent(name) {
  list.current = name;
  for (const node of $("frame-list-body").children) node.setAttribute("aria-current", String(node.dataset.name === name));
}

export function toggleFrameList(show = $("frame-list").hidden) {
  $("frame-list").hidden = !show;
  $("frame-list-toggle").setAttribute("aria-expanded", String(show));
  if (!show) return;
  $("frame-list").dataset.ready = "0";
  refreshFrameList().then(() => {
    const current = $("frame-list-body").querySelector('tr[aria-current="true"]');
    if (current) current.scrollIntoView({ block: "center" });
  });
}

export function initFrameList(classes, open) {
  list.classes = classes;
  list.open = open;
  $("frame-list-toggle").addEventListener("click", () => toggleFrameList());
  $("frame-list-close").addEventListener("click", () => toggleFrameList(false));
  $("frame-list-filter").addEventListener("change", refreshFrameList);
}
