// Reads the room camera's frame stamps (hal/stamps.py) from decoded pictures: 32 x 4 blocks of
// black (0) / white (1) in the top-left corner; seq (u32), capture_ns (u64), CRC-32 of those 12 bytes.
const COLS = 32, ROWS = 4;

export function blockSize(width, height) {
  let side = Math.floor(Math.min(Math.floor(width / (2 * COLS)), Math.floor(height / (4 * ROWS))) / 8) * 8;
  side = Math.max(side, 8);
  if (side * COLS > width || side * ROWS > height) return null;
  return side;
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// luma: Uint8Array of the Y plane of the stamp region with row pitch ``stride``.
export function readStampLuma(luma, stride, side) {
  const bytes = new Uint8Array(16);
  const lo = Math.floor(side / 4), hi = side - Math.floor(side / 4);
  for (let r = 0; r < ROWS; r++) {
    for (let c = 0; c < COLS; c++) {
      let sum = 0, n = 0;
      for (let y = r * side + lo; y < r * side + hi; y++) {
        for (let x = c * side + lo; x < c * side + hi; x++) { sum += luma[y * stride + x]; n++; }
      }
      if (sum / n > (16 + 235) / 2) { const bit = r * COLS + c; bytes[bit >> 3] |= 0x80 >> (bit & 7); }
    }
  }
  return unpack(bytes);
}

function unpack(bytes) {
  const dv = new DataView(bytes.buffer);
  if (crc32(bytes.subarray(0, 12)) !== dv.getUint32(12)) return null;
  return { seq: dv.getUint32(0), captureNs: dv.getBigUint64(4) };
}

// rgba: ImageData of the stamp region (side*COLS x side*ROWS) of a width x height picture.
export function readStamp(img, side) {
  const bytes = new Uint8Array(16);
  const lo = Math.floor(side / 4), hi = side - Math.floor(side / 4);
  for (let r = 0; r < ROWS; r++) {
    for (let c = 0; c < COLS; c++) {
      let sum = 0, n = 0;
      for (let y = r * side + lo; y < r * side + hi; y += 2) {
        for (let x = c * side + lo; x < c * side + hi; x += 2) {
          const i = (y * img.width + x) * 4;
          // BT.601 luma from the RGB the browser converted to (the sim writes Y=16 / Y=235).
          sum += 0.299 * img.data[i] + 0.587 * img.data[i + 1] + 0.114 * img.data[i + 2];
          n++;
        }
      }
      if (sum / n > 127) { const bit = r * COLS + c; bytes[bit >> 3] |= 0x80 >> (bit & 7); }
    }
  }
  return unpack(bytes);
}
