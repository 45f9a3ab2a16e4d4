// The SFrame transform worker: RTCRtpScriptTransform calls onrtctransform once per sender/receiver.
import { clearBytes, concat, deriveKey, open, seal } from "./sframe.js";

let sendKey = null;
const recvKeys = new Map();
// CTR starts at the current time in microseconds and counts up: a reload of the same link (same key
// and KID) starts above every CTR used before, so no (key, KID, CTR) repeats (RFC 9605 §9.1).
let ctr = BigInt(Date.now()) * 1000n;
const stats = { sealed: 0, opened: 0, failed: {}, dropped_no_key: 0 };
const perKid = {};

self.onmessage = async (event) => {
  const msg = event.data;
  if (msg.type === "keys") {
    if (msg.send) sendKey = await deriveKey(msg.suite, BigInt(msg.send.kid), b64(msg.send.key), "encrypt");
    for (const r of msg.recv) recvKeys.set(BigInt(r.kid), await deriveKey(msg.suite, BigInt(r.kid), b64(r.key), "decrypt"));
    self.postMessage({ type: "ready" });
  }
};

function b64(text) {
  const s = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - text.length % 4) % 4));
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

function fail(reason) { stats.failed[reason] = (stats.failed[reason] || 0) + 1; }

async function encrypt(kind, frame, controller) {
  if (!sendKey) { stats.dropped_no_key++; return; }
  const data = new Uint8Array(frame.data);
  const n = clearBytes(kind, data);
  const head = data.subarray(0, n);
  const c = ctr++;
  frame.data = concat(head, await seal(sendKey, c, head, data.subarray(n))).buffer;
  stats.sealed++;
  controller.enqueue(frame);
}

async function decrypt(kind, name, frame, controller) {
  const data = new Uint8Array(frame.data);
  let n;
  try { n = clearBytes(kind, data); } catch { fail("short"); return; }
  const head = data.subarray(0, n);
  try {
    const plain = await open(recvKeys, head, data.subarray(n));
    frame.data = concat(head, plain).buffer;
  } catch (err) {
    // Nothing undecryptable reaches the decoder: no garbage picture, the page shows why instead.
    fail(err.reason || "error");
    return;
  }
  stats.opened++;
  perKid[name] = (perKid[name] || 0) + 1;
  controller.enqueue(frame);
}

self.onrtctransform = (event) => {
  const t = event.transformer;
  const { operation, kind, name } = t.options;
  const transform = new TransformStream({
    async transform(frame, controller) {
      try {
        if (operation === "encrypt") await encrypt(kind, frame, controller);
        else await decrypt(kind, name, frame, controller);
      } catch (err) {
        fail(String(err.message || err));
      }
    },
  });
  t.readable.pipeThrough(transform).pipeTo(t.writable);
};

setInterval(() => self.postMessage({ type: "stats", stats, perKid }), 500);
