// roomagent browser participant: joins a Janus VideoRoom, sends camera + microphone, shows and plays
// the others, with SFrame end to end in an RTCRtpScriptTransform worker. Keys come from the URL
// fragment (never sent to any server). See docs/webrtc.md.
import { blockSize, readStamp, readStampLuma } from "./stamps.js";

const params = new URLSearchParams(location.hash.slice(1));
const sfu = params.get("sfu");
const room = Number(params.get("room"));
const token = params.get("token") || "";
const myName = params.get("name") || "guest";
const [camW, camH] = (params.get("video") || "640x360").split("x").map(Number);
let keys = null;
try {
  if (params.get("keys")) {
    const t = params.get("keys");
    keys = JSON.parse(atob(t.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - t.length % 4) % 4)));
  }
} catch { keys = null; }

const $ = (id) => document.getElementById(id);
const stats = { tiles: {}, worker: null, published: false, errors: [], canDecrypt: !!keys };
window.roomStats = stats;
$("title").textContent = `${myName} · meeting ${keys ? keys.meeting : ""}`;

function notice(text) { const n = $("notice"); n.textContent = text; n.hidden = false; }
function status(text) { $("status").textContent = text; }

if (!keys) {
  notice("Cannot decrypt this meeting: the link has no meeting key. " +
         "Ask the organiser for the full join link (the key travels after the # and never reaches a server).");
  $("badge").textContent = "cannot decrypt"; $("badge").className = "badge bad";
}

if (typeof RTCRtpScriptTransform === "undefined") {
  notice("This browser cannot do end-to-end encryption (no RTCRtpScriptTransform): not joining.");
  throw new Error("no RTCRtpScriptTransform");
}

const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
const workerReady = new Promise((resolve) => {
  worker.addEventListener("message", (e) => {
    if (e.data.type === "ready") resolve();
    if (e.data.type === "stats") { stats.worker = e.data.stats; stats.perKid = e.data.perKid; updateBadge(); }
  });
});
worker.postMessage({ type: "keys", suite: keys ? keys.suite : 4, send: keys ? keys.send : null, recv: keys ? keys.recv : [] });

const started = performance.now();
function updateBadge() {
  if (!keys) return;
  const w = stats.worker;
  if (w && w.opened > 0) { $("badge").textContent = "end-to-end encrypted"; $("badge").className = "badge on"; }
  else if (w && Object.keys(w.failed).length && performance.now() - started > 5000) {
    // Frames arrive but none opens: a link from another meeting or an older key epoch.
    $("badge").textContent = "cannot decrypt"; $("badge").className = "badge bad";
    notice("Cannot decrypt this meeting with the key in this link (another meeting, or the keys have changed). Ask for a new link.");
  }
}

// --- Janus HTTP API ---------------------------------------------------------------------------
const tx = () => Math.random().toString(36).slice(2);
async function post(path, body) {
  const r = await fetch(sfu + path, { method: "POST", body: JSON.stringify({ ...body, transaction: body.transaction || tx() }) });
  return r.json();
}
const waiters = new Map();
const handlers = new Map();
let session;

async function poll() {
  for (;;) {
    try {
      const r = await fetch(`${sfu}/${session}?maxev=10&rid=${Date.now()}`);
      const events = await r.json();
      for (const ev of Array.isArray(events) ? events : [events]) {
        const w = waiters.get(ev.transaction);
        if (w && ev.janus !== "ack") { waiters.delete(ev.transaction); w(ev); continue; }
        const h = handlers.get(ev.sender);
        if (h) h(ev);
      }
    } catch (err) { await new Promise((r) => setTimeout(r, 500)); }
  }
}

async function message(handle, body, jsep) {
  const t = tx();
  const p = new Promise((resolve) => waiters.set(t, resolve));
  const out = await post(`/${session}/${handle}`, { janus: "message", transaction: t, body, ...(jsep ? { jsep } : {}) });
  if (out.janus !== "ack") { waiters.delete(t); return out; }
  return p;
}

async function attach() {
  const out = await post(`/${session}`, { janus: "attach", plugin: "janus.plugin.videoroom" });
  return out.data.id;
}

function iceDone(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
    setTimeout(resolve, 3000);
  });
}

// --- tiles ------------------------------------------------------------------------------------
function tile(name, self) {
  const el = document.createElement("div");
  el.className = "tile" + (self ? " self" : "") + (keys ? "" : " locked");
  const video = document.createElement("video");
  video.autoplay = true; video.playsInline = true; video.muted = !!self;
  const label = document.createElement("div"); label.className = "name"; label.textContent = name + (self ? " (you)" : "");
  const info = document.createElement("div"); info.className = "info";
  el.append(video, label, info);
  $("tiles").append(el);
  return { el, video, info };
}

// Every decoded frame of a remote video track is read (MediaStreamTrackProcessor: the decoder's output,
// not only the frames the compositor happens to paint); the stamp comes from the frame's luma plane,
// or from a canvas drawing of it where the frame's pixels are not CPU-readable.
function readStamps(name, track, info) {
  const s = { frames: 0, stamps: 0, firstSeq: null, lastSeq: null, missing: 0, outOfOrder: 0,
              latencies: [], t0: null, t1: null, seqs: [], reader: null };
  stats.tiles[name] = s;
  const canvas = new OffscreenCanvas(8, 8);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const record = (stamp, width, height) => {
    const t = performance.now();
    s.seqs.push(stamp.seq);
    if (s.firstSeq === null) { s.firstSeq = stamp.seq; s.t0 = t; }
    else if (stamp.seq > s.lastSeq + 1) s.missing += stamp.seq - s.lastSeq - 1;
    else if (stamp.seq <= s.lastSeq) s.outOfOrder++;
    if (s.lastSeq === null || stamp.seq > s.lastSeq) s.lastSeq = stamp.seq;
    s.stamps++; s.t1 = t;
    // Same machine, same wall clock: capture (room) to this decoded frame here.
    s.latencies.push((performance.timeOrigin + t) - Number(stamp.captureNs / 1000000n));
    const secs = (s.t1 - s.t0) / 1000;
    info.textContent = `${width}x${height} · ${secs > 0 ? ((s.stamps - 1) / secs).toFixed(1) : "-"} fps`;
  };
  const read = async (frame) => {
    const w = frame.displayWidth, h = frame.displayHeight;
    const side = blockSize(w, h);
    if (!side) return;
    const rect = { x: 0, y: 0, width: side * 32, height: side * 4 };
    let stamp = null;
    if (frame.format === "I420" || frame.format === "NV12" || frame.format === "I420A") {
      s.reader = "luma";
      const buf = new Uint8Array(frame.allocationSize({ rect }));
      const layout = await frame.copyTo(buf, { rect });
      stamp = readStampLuma(buf.subarray(layout[0].offset), layout[0].stride, side);
    } else {
      s.reader = "canvas";
      canvas.width = rect.width; canvas.height = rect.height;
      ctx.drawImage(frame, 0, 0, rect.width, rect.height, 0, 0, rect.width, rect.height);
      stamp = readStamp(ctx.getImageData(0, 0, rect.width, rect.height), side);
    }
    if (stamp) record(stamp, w, h);
  };
  (async () => {
    const reader = new MediaStreamTrackProcessor({ track, maxBufferSize: 30 }).readable.getReader();
    for (;;) {
      const { value: frame, done } = await reader.read();
      if (done) return;
      s.frames++;
      try { await read(frame); } finally { frame.close(); }
    }
  })().catch((err) => stats.errors.push(`stamps ${name}: ${err}`));
}

// --- publish and subscribe ---------------------------------------------------------------------
const subscribed = new Set();

// The room sends two VP8 layers (full and half size; aiortc has no simulcast): take the one asked for
// (&layer=low in the link), and the audio.
function chooseStreams(p) {
  const want = params.get("layer") || "high";
  const streams = (p.streams || []).filter((s) => !s.disabled);
  if (!streams.length) return [{ feed: p.id }];
  const videos = streams.filter((s) => s.type === "video");
  const pick = videos.find((s) => s.description === want) || videos[0];
  const out = streams.filter((s) => s.type === "audio").map((s) => ({ feed: p.id, mid: s.mid }));
  if (pick) out.push({ feed: p.id, mid: pick.mid });
  return out;
}

async function subscribe(p) {
  const feed = p.id, display = p.display;
  if (subscribed.has(feed)) return;
  subscribed.add(feed);
  const handle = await attach();
  const reply = await message(handle, { request: "join", ptype: "subscriber", room, pin: token, streams: chooseStreams(p) });
  const pc = new RTCPeerConnection();
  const t = tile(display, false);
  const stream = new MediaStream();
  pc.ontrack = (e) => {
    e.receiver.transform = new RTCRtpScriptTransform(worker, { operation: "decrypt", kind: e.track.kind, name: display });
    stream.addTrack(e.track);
    t.video.srcObject = stream;
    // Stamp reading is a measurement aid (Chromium's MediaStreamTrackProcessor); other browsers just show.
    if (e.track.kind === "video" && typeof MediaStreamTrackProcessor !== "undefined") readStamps(display, e.track, t.info);
  };
  await pc.setRemoteDescription(reply.jsep);
  await pc.setLocalDescription(await pc.createAnswer());
  await iceDone(pc);
  await message(handle, { request: "start", room }, { type: "answer", sdp: pc.localDescription.sdp });
  t.video.play().catch(() => {});
}

async function main() {
  await workerReady;
  const created = await post("", { janus: "create" });
  session = created.data.id;
  poll();
  setInterval(() => post(`/${session}`, { janus: "keepalive" }), 20000);
  const pub = await attach();
  handlers.set(pub, (ev) => {
    const d = ev.plugindata && ev.plugindata.data;
    for (const p of (d && d.publishers) || []) subscribe(p);
  });
  const joined = await message(pub, { request: "join", ptype: "publisher", room, display: myName, pin: token });
  const data = joined.plugindata.data;
  if (data.error) { notice(`cannot join: ${data.error}`); return; }
  status(`joined room ${room}`);
  if (keys && keys.send) {
    const media = await navigator.mediaDevices.getUserMedia({ video: { width: camW, height: camH }, audio: true });
    const self = tile(myName, true);
    self.video.srcObject = media;
    const pc = new RTCPeerConnection();
    for (const track of media.getTracks()) {
      const sender = pc.addTrack(track, media);
      sender.transform = new RTCRtpScriptTransform(worker, { operation: "encrypt", kind: track.kind });
    }
    for (const tr of pc.getTransceivers()) {
      const kind = tr.sender.track.kind;
      const want = kind === "video" ? "video/VP8" : "audio/opus";
      const caps = RTCRtpSender.getCapabilities(kind).codecs.filter((c) => c.mimeType.toLowerCase() === want.toLowerCase());
      tr.setCodecPreferences(caps);
    }
    await pc.setLocalDescription(await pc.createOffer());
    await iceDone(pc);
    const reply = await message(pub, { request: "publish", display: myName },
      { type: "offer", sdp: pc.localDescription.sdp, e2ee: true });
    await pc.setRemoteDescription(reply.jsep);
    stats.published = true;
  }
  for (const p of data.publishers || []) subscribe(p);
}

main().catch((err) => { stats.errors.push(String(err)); notice(`error: ${err}`); });
