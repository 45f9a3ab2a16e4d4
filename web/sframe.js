// SFrame (RFC 9605) with WebCrypto, byte-for-byte the same as the room's agent/e2ee:
// key derivation §4.4.2 (HKDF, salt "", labels "SFrame 1.0 Secret key|salt " + KID(8) + suite(2)),
// header §4.3, AEAD §4.4.3 (nonce = sframe_salt XOR CTR, AAD = header || metadata).
// Suites 4 (AES_128_GCM_SHA256_128) and 5 (AES_256_GCM_SHA512_128).

const SUITES = {
  4: { hash: "SHA-256", nk: 16, nn: 12, nt: 16 },
  5: { hash: "SHA-512", nk: 32, nn: 12, nt: 16 },
};

const te = new TextEncoder();

function be(value, len) {
  const out = new Uint8Array(len);
  let v = BigInt(value);
  for (let i = len - 1; i >= 0; i--) { out[i] = Number(v & 0xffn); v >>= 8n; }
  return out;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

function minLen(v) { let n = 0; let x = BigInt(v); while (x > 0n) { n++; x >>= 8n; } return Math.max(n, 1); }

// §4.3: config byte X|K(3)|Y|C(3); KID < 8 and CTR < 8 fit in it, otherwise 1..8 extra bytes each.
export function encodeHeader(kid, ctr) {
  kid = BigInt(kid); ctr = BigInt(ctr);
  let config = 0; let kidBytes = new Uint8Array(0); let ctrBytes = new Uint8Array(0);
  if (kid < 8n) config |= Number(kid) << 4;
  else { const k = minLen(kid); config |= 0x80 | ((k - 1) << 4); kidBytes = be(kid, k); }
  if (ctr < 8n) config |= Number(ctr);
  else { const c = minLen(ctr); config |= 0x08 | (c - 1); ctrBytes = be(ctr, c); }
  return concat(new Uint8Array([config]), kidBytes, ctrBytes);
}

export function decodeHeader(data) {
  if (data.length < 1) throw new Error("short");
  const config = data[0];
  let pos = 1; let kid; let ctr;
  const read = (n) => {
    if (pos + n > data.length) throw new Error("short");
    let v = 0n; for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(data[pos + i]);
    pos += n; return v;
  };
  kid = (config & 0x80) ? read(((config >> 4) & 7) + 1) : BigInt((config >> 4) & 7);
  ctr = (config & 0x08) ? read((config & 7) + 1) : BigInt(config & 7);
  return { kid, ctr, length: pos };
}

export async function deriveKey(suiteId, kid, baseKey, usage) {
  const s = SUITES[suiteId];
  if (!s) throw new Error(`unsupported SFrame suite ${suiteId}`);
  const ikm = await crypto.subtle.importKey("raw", baseKey, "HKDF", false, ["deriveBits"]);
  const suffix = concat(be(kid, 8), be(suiteId, 2));
  const bits = async (label, n) => new Uint8Array(await crypto.subtle.deriveBits(
    { name: "HKDF", hash: s.hash, salt: new Uint8Array(0), info: concat(te.encode(label), suffix) }, ikm, n * 8));
  const keyBytes = await bits("SFrame 1.0 Secret key ", s.nk);
  const salt = await bits("SFrame 1.0 Secret salt ", s.nn);
  const key = await crypto.subtle.importKey("raw", keyBytes, "AES-GCM", false, [usage]);
  return { kid: BigInt(kid), key, salt, suite: s };
}

function nonce(salt, ctr) {
  const n = salt.slice();
  const c = be(ctr, 12);
  for (let i = 0; i < 12; i++) n[i] ^= c[i];
  return n;
}

// Returns header || ciphertext || tag for plaintext, with metadata authenticated (not carried).
export async function seal(k, ctr, metadata, plaintext) {
  const header = encodeHeader(k.kid, ctr);
  const ct = new Uint8Array(await crypto.subtle.encrypt(
    { name: "AES-GCM", iv: nonce(k.salt, ctr), additionalData: concat(header, metadata), tagLength: 128 },
    k.key, plaintext));
  return concat(header, ct);
}

// keys: Map(kid bigint -> derived key). Throws {reason} on unknown KID or a bad tag.
export async function open(keys, metadata, data) {
  const h = decodeHeader(data);
  const k = keys.get(h.kid);
  if (!k) { const e = new Error("unknown_kid"); e.reason = "unknown_kid"; throw e; }
  const header = data.subarray(0, h.length);
  try {
    return new Uint8Array(await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: nonce(k.salt, h.ctr), additionalData: concat(header, metadata), tagLength: 128 },
      k.key, data.subarray(h.length)));
  } catch (err) {
    const e = new Error("authentication"); e.reason = "authentication"; throw e;
  }
}

// The per-codec rule (docs/webrtc.md): VP8 keeps its payload header clear, 10 bytes on keyframes
// (bit 0 of byte 0 is 0) and 3 otherwise; Opus is protected whole.
export function clearBytes(kind, frame) {
  if (kind !== "video") return 0;
  if (frame.length === 0) throw new Error("empty");
  const n = (frame[0] & 1) === 0 ? 10 : 3;
  if (frame.length <= n) throw new Error("short");
  return n;
}

export { concat };
