// Severstal run-length encoding: 1-based "start length" pairs over pixels numbered top to
// bottom, then left to right (column-major). Masks here are row-major Uint8Arrays (as ImageData
// is), so both directions transpose. Pure functions; the browser test checks them against Python.

export function decodeRle(rle, width, height) {
  const mask = new Uint8Array(width * height);
  const numbers = rle.trim() ? rle.trim().split(/\s+/).map(Number) : [];
  for (let i = 0; i < numbers.length; i += 2) {
    const end = numbers[i] - 1 + numbers[i + 1];
    for (let p = numbers[i] - 1; p < end; p++) {
      mask[(p % height) * width + Math.floor(p / height)] = 1;
    }
  }
  return mask;
}

export function encodeRle(mask, width, height) {
  const parts = [];
  let start = -1;
  const total = width * height;
  for (let p = 0; p < total; p++) {
    const on = mask[(p % height) * width + Math.floor(p / height)] !== 0;
    if (on && start < 0) start = p;
    else if (!on && start >= 0) {
      parts.push(start + 1, p - start);
      start = -1;
    }
  }
  if (start >= 0) parts.push(start + 1, total - start);
  return parts.join(" ");
}
