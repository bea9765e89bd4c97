// Mask editing on a frame: brush, eraser, polygons, per-stroke undo and redo as diffs.
//
// Masks are row-major Uint8Arrays, one per class, in image pixels. A brush covers the pixels
// whose centre (x + 0.5, y + 0.5) lies within `radius` of the stroke's path, a polyline through
// the pointer positions in image coordinates. A polygon covers the pixels whose centre it
// contains (even-odd rule; a centre exactly on an edge counts on the polygon's left edges, not on
// its right ones, so two polygons that share an edge never both cover a pixel). Each stroke
// records which (class, pixel) it changed with the old and new value, so undo and redo rewrite
// only those pixels, and `onChange` is told the rectangle to repaint. Nothing here knows about
// the DOM; label.js wires the pointer to it.

export class MaskEditor {
  constructor(width, height, classes, onChange) {
    this.width = width;
    this.height = height;
    this.masks = Array.from({ length: classes }, () => new Uint8Array(width * height));
    this.onChange = onChange; // (rect [x0, y0, x1, y1)) => void
    this.undoStack = [];
    this.redoStack = [];
    this.stroke = null;
    this.classIndex = 0;
    this.radius = 8; // image pixels
    this.exclusive = false; // painting a class clears the others under the brush
  }

  load(masks) {
    this.masks = masks;
    this.undoStack = [];
    this.redoStack = [];
    this.stroke = null;
    this.onChange([0, 0, this.width, this.height]);
  }

  // ---------- strokes ----------

  begin(erase) {
    this.stroke = { erase, changes: new Map(), rect: null, last: null };
  }

  // Extend the stroke to (x, y) in image coordinates (floats).
  to(x, y) {
    const s = this.stroke;
    if (!s) return;
    const [ax, ay] = s.last || [x, y];
    s.last = [x, y];
    const r = this.radius;
    const x0 = Math.max(0, Math.floor(Math.min(ax, x) - r));
    const x1 = Math.min(this.width, Math.ceil(Math.max(ax, x) + r) + 1);
    const y0 = Math.max(0, Math.floor(Math.min(ay, y) - r));
    const y1 = Math.min(this.height, Math.ceil(Math.max(ay, y) + r) + 1);
    if (x0 >= x1 || y0 >= y1) return;
    const dx = x - ax, dy = y - ay;
    const len2 = dx * dx + dy * dy;
    const r2 = r * r;
    for (let py = y0; py < y1; py++) {
      const cy = py + 0.5;
      for (let px = x0; px < x1; px++) {
        const cx = px + 0.5;
        let t = len2 > 0 ? ((cx - ax) * dx + (cy - ay) * dy) / len2 : 0;
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        const qx = ax + t * dx, qy = ay + t * dy;
        const ex = cx - qx, ey = cy - qy;
        if (ex * ex + ey * ey <= r2) this._apply(py * this.width + px, s.erase);
      }
    }
    this._grow([x0, y0, x1, y1]);
  }

  // Fill (or with `erase`, clear) a polygon of image-coordinate points, as one stroke.
  polygon(points, erase) {
    if (points.length < 3) return false;
    this.begin(erase);
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    const x0 = Math.max(0, Math.floor(Math.min(...xs))), x1 = Math.min(this.width, Math.ceil(Math.max(...xs)) + 1);
    const y0 = Math.max(0, Math.floor(Math.min(...ys))), y1 = Math.min(this.height, Math.ceil(Math.max(...ys)) + 1);
    for (let py = y0; py < y1; py++) {
      const cy = py + 0.5;
      // crossings of the row's centre line with the edges, then fill between pairs
      const crossings = [];
      for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
        const [xi, yi] = points[i], [xj, yj] = points[j];
        if ((yi > cy) !== (yj > cy)) crossings.push(xi + ((cy - yi) * (xj - xi)) / (yj - yi));
      }
      crossings.sort((a, b) => a - b);
      for (let k = 0; k + 1 < crossings.length; k += 2) {
        for (let px = Math.max(x0, Math.ceil(crossings[k] - 0.5)); px < x1 && px + 0.5 < crossings[k + 1]; px++) {
          this._apply(py * this.width + px, erase);
        }
      }
    }
    this._grow([x0, y0, x1, y1]);
    return this.end();
  }

  // Clear every class (the "defect-free" key), as one undoable change.
  clearAll() {
    this.begin(true);
    const saved = this.exclusive;
    this.exclusive = true;
    for (let p = 0; p < this.width * this.height; p++) {
      if (this.masks.some((m) => m[p])) this._apply(p, true);
    }
    this.exclusive = saved;
    this._grow([0, 0, this.width, this.height]);
    return this.end();
  }

  _apply(p, erase) {
    const changes = this.stroke.changes;
    const n = this.width * this.height;
    this.masks.forEach((mask, c) => {
      let value;
      if (c === this.classIndex) value = erase ? 0 : 1;
      else if (this.exclusive) value = 0;
      else return;
      if (mask[p] === value) return;
      const key = c * n + p;
      if (!changes.has(key)) changes.set(key, mask[p]);
      mask[p] = value;
    });
  }

  _grow(rect) {
    const s = this.stroke;
    s.rect = s.rect ? [Math.min(s.rect[0], rect[0]), Math.min(s.rect[1], rect[1]),
      Math.max(s.rect[2], rect[2]), Math.max(s.rect[3], rect[3])] : rect;
    this.onChange(rect);
  }

  // End the stroke; true when it changed a pixel (then it is on the undo stack).
  end() {
    const s = this.stroke;
    this.stroke = null;
    if (!s || !s.changes.size) return false;
    const n = this.width * this.height;
    const keys = Int32Array.from(s.changes.keys());
    const old = Uint8Array.from(s.changes.values());
    const now = keys.map((k) => this.masks[Math.floor(k / n)][k % n]);
    this.undoStack.push({ keys, old, now: Uint8Array.from(now), rect: s.rect });
    this.redoStack = [];
    return true;
  }

  _replay(record, values) {
    const n = this.width * this.height;
    for (let i = 0; i < record.keys.length; i++) {
      const k = record.keys[i];
      this.masks[Math.floor(k / n)][k % n] = values[i];
    }
    this.onChange(record.rect);
  }

  undo() {
    const record = this.undoStack.pop();
    if (!record) return false;
    this._replay(record, record.old);
    this.redoStack.push(record);
    return true;
  }

  redo() {
    const record = this.redoStack.pop();
    if (!record) return false;
    this._replay(record, record.now);
    this.undoStack.push(record);
    return true;
  }
}
