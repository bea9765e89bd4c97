// What the labelling page says of the queue, in words: the open frame's class in doubt, the
// queue's build while there is none stored, and what to run without a model. Pure functions of
// the server's answers (GET /api/label/frames/{name}, /api/label/queue); label.js shows them.

import { el } from "./dom.js";

// "in doubt: class 3 · scratches and streaks (peak 0.47 under threshold 0.50), most doubtful at
// x 812, y 120 · queue #1 of 102" for a frame whose queue entry names its class in doubt.
export function doubtText(frame, classes, queueSize) {
  const doubt = frame.queue.detail.doubt;
  const c = classes.find((k) => k.class_id === doubt.class_id);
  const peak = doubt.peak.toFixed(2);
  const side = doubt.off ? `peak ${peak}; the model has this class off: no mask at any peak`
    : doubt.threshold === null ? `peak ${peak}`
      : `peak ${peak} ${doubt.peak >= doubt.threshold ? "over" : "under"} threshold ${doubt.threshold.toFixed(2)}`;
  const [x, y] = [Math.round(doubt.at[0] * frame.width), Math.round(doubt.at[1] * frame.height)];
  return `in doubt: class ${doubt.class_id}${c ? ` · ${c.name}` : ""} (${side}), ` +
    `most doubtful at x ${x}, y ${y} · queue #${frame.queue.rank + 1}${queueSize ? ` of ${queueSize}` : ""}`;
}

// The queue while there is none stored: being built (with how far), failed, or no model to build it.
export function queueWord(build) {
  if (build.state === "running") {
    const eta = build.eta_s === null || build.eta_s === undefined ? ""
      : build.eta_s < 90 ? `, about ${Math.max(1, Math.round(build.eta_s))} s left`
        : `, about ${Math.round(build.eta_s / 60)} min left`;
    return build.total === null || build.total === undefined ? "building the queue…"
      : `building the queue: ${build.done}/${build.total} frames scored${eta}`;
  }
  if (build.state === "failed") return `the queue could not be built: ${build.error}`;
  if (build.state === "none") return "no queue: no model yet";
  return "no queue yet";
}

// What to run without a model: the server's sentence, its `commands` set as code.
export function hintNodes(text) {
  return text.split("`").map((part, i) => (i % 2 ? el("code", {}, part) : part));
}
