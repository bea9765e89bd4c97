// Painting class masks into an RGBA buffer, over the whole frame or only the rectangle a stroke
// touched. Classes are composited in order with "source-over", each at its own opacity, so
// overlapping classes (allowed in Severstal) both show.

import { rgb } from "./dom.js";

// layers: [{mask: Uint8Array (row-major), color: "#RRGGBB", alpha: 0..1, visible: bool}]
// data: the ImageData's Uint8ClampedArray of a width-wide frame; rect: [x0, y0, x1, y1), default all.
export function composite(data, layers, width, height, rect = [0, 0, width, height]) {
  const [x0, y0, x1, y1] = rect;
  const shown = layers.filter((l) => l.visible && l.alpha > 0)
    .map((l) => ({ mask: l.mask, alpha: l.alpha, color: rgb(l.color) }));
  let painted = 0;
  for (let y = y0; y < y1; y++) {
    for (let x = x0, p = y * width + x0; x < x1; x++, p++) {
      let r = 0, g = 0, b = 0, a = 0;
      for (const layer of shown) {
        if (!layer.mask[p]) continue;
        const k = layer.alpha;
        // source-over in premultiplied terms
        r = layer.color[0] * k + r * (1 - k);
        g = layer.color[1] * k + g * (1 - k);
        b = layer.color[2] * k + b * (1 - k);
        a = k + a * (1 - k);
      }
      const q = 4 * p;
      if (a > 0) {
        data[q] = r / a; data[q + 1] = g / a; data[q + 2] = b / a; data[q + 3] = 255 * a;
        painted++;
      } else {
        data[q + 3] = 0;
      }
    }
  }
  return painted;
}
