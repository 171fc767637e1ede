// voicegrid demo page: a media leg for a session that the backend created (docs/telephony.md).
// Open it as /demo/#session=<id>&token=<media token>: the fragment never reaches a server log.
// The page sends the microphone as PCM16 at the session's input rate and plays model audio;
// tool calls are answered by the backend, the page only shows them.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { ws: null, ctx: null, mic: null, node: null, inRate: 24000, outRate: 24000,
                playAt: 0, sources: new Set(), heardMs: 0, sentMs: 0, partial: {} };

function params() {
  const out = {};
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    const [k, v] = part.split("=");
    if (k) out[decodeURIComponent(k)] = decodeURIComponent(v || "");
  }
  return out;
}

function status(text, kind) {
  $("status").textContent = text;
  $("status").className = kind || "";
}

function log(text) {
  const line = `${new Date().toISOString().slice(11, 23)}  ${text}\n`;
  $("log").textContent += line;
  $("log").scrollTop = $("log").scrollHeight;
}

function meter() {
  $("meter").textContent = `sent ${(state.sentMs / 1000).toFixed(1)} s · ` +
    `received ${(state.heardMs / 1000).toFixed(1)} s of audio`;
}

// --- microphone -> PCM16 at the session's rate ---------------------------------------------
let carry = new Float32Array(0);
let pos = 0;  // fractional read position into carry, in input samples

function resampleToPcm16(input, fromRate, toRate) {
  const joined = new Float32Array(carry.length + input.length);
  joined.set(carry); joined.set(input, carry.length);
  const step = fromRate / toRate;
  const out = [];
  while (pos + 1 < joined.length) {
    const i = Math.floor(pos), f = pos - i;
    const s = joined[i] * (1 - f) + joined[i + 1] * f;
    out.push(Math.max(-32768, Math.min(32767, Math.round(s * 32767))));
    pos += step;
  }
  const keep = Math.floor(pos);
  carry = joined.slice(keep);
  pos -= keep;
  return Int16Array.from(out);
}

let pending = [];
let pendingLen = 0;

function onMicChunk(samples) {
  const pcm = resampleToPcm16(samples, state.ctx.sampleRate, state.inRate);
  pending.push(pcm); pendingLen += pcm.length;
  const frame = Math.round(state.inRate / 50);  // 20 ms
  if (pendingLen < frame || !state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  const all = new Int16Array(pendingLen);
  let o = 0;
  for (const p of pending) { all.set(p, o); o += p.length; }
  const whole = all.length - (all.length % frame);
  state.ws.send(all.slice(0, whole).buffer);
  state.sentMs += whole * 1000 / state.inRate;
  pending = [all.slice(whole)]; pendingLen = all.length - whole;
}

// --- model audio -> speakers ----------------------------------------------------------------
function play(buffer) {
  const pcm = new Int16Array(buffer);
  const audio = state.ctx.createBuffer(1, pcm.length, state.outRate);
  const ch = audio.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
  const src = state.ctx.createBufferSource();
  src.buffer = audio;
  src.connect(state.ctx.destination);
  const at = Math.max(state.ctx.currentTime + 0.03, state.playAt);
  src.start(at);
  state.playAt = at + audio.duration;
  state.sources.add(src);
  src.onended = () => state.sources.delete(src);
  state.heardMs += audio.duration * 1000;
  meter();
}

function stopPlayback() {
  for (const src of state.sources) { try { src.stop(); } catch (e) { /* already ended */ } }
  state.sources.clear();
  state.playAt = 0;
}

// --- session events -------------------------------------------------------------------------
function transcript(e) {
  const key = `${e.role}:${e.item_id || ""}`;
  let p = state.partial[key];
  if (!p) {
    p = document.createElement("p");
    p.className = e.role;
    $("transcript").appendChild(p);
    state.partial[key] = p;
    p.dataset.text = "";
  }
  p.dataset.text = e.final ? e.text : p.dataset.text + e.text;
  p.innerHTML = "";
  const who = document.createElement("b");
  who.textContent = e.role === "user" ? "You: " : "Agent: ";
  const text = document.createElement("span");
  text.textContent = p.dataset.text;
  if (!e.final) text.className = "partial";
  p.append(who, text);
  if (e.final) delete state.partial[key];
}

function onEvent(e) {
  switch (e.type) {
    case "media.attached":
      state.inRate = e.input_audio.sample_rate;
      state.outRate = e.output_audio.sample_rate;
      status("live", "live");
      log(`attached to session ${e.session_id} (mic ${state.inRate} Hz, ` +
          `speaker ${state.outRate} Hz)`);
      return;
    case "audio.meta":
      return;
    case "transcript":
      transcript(e);
      if (e.final) log(`transcript ${e.role}: ${e.text}`);
      return;
    case "tool-call": {
      const d = document.createElement("div");
      d.id = `call-${e.call_id}`;
      d.textContent = `→ ${e.name}(${JSON.stringify(e.arguments)})  · answered by the backend`;
      $("tools").appendChild(d);
      log(`tool-call ${e.name} ${JSON.stringify(e.arguments)}`);
      return;
    }
    case "interrupted":
      stopPlayback();
      log(`interrupted ${e.response_id || ""}: playback stopped`);
      return;
    case "closed":
      status("ended");
      log(`closed (${e.reason || ""})`);
      return;
    default:
      log(`${e.type} ${JSON.stringify(Object.fromEntries(
        Object.entries(e).filter(([k]) => k !== "type")))}`);
  }
}

// --- start / stop ---------------------------------------------------------------------------
async function start() {
  const p = params();
  if (!p.token) {
    status("no token", "error");
    log("open this page as /demo/#session=<id>&token=<media token> (see docs/telephony.md)");
    return;
  }
  $("start").disabled = true;
  status("connecting");
  state.ctx = new AudioContext();
  await state.ctx.resume();
  await state.ctx.audioWorklet.addModule("worklet.js");
  state.mic = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
  const source = state.ctx.createMediaStreamSource(state.mic);
  state.node = new AudioWorkletNode(state.ctx, "voicegrid-capture");
  state.node.port.onmessage = (m) => onMicChunk(m.data);
  source.connect(state.node);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = `token=${encodeURIComponent(p.token)}` +
    (p.session ? `&session=${encodeURIComponent(p.session)}` : "");
  const ws = new WebSocket(`${scheme}://${location.host}/v1/media/browser?${query}`);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.onmessage = (m) => (typeof m.data === "string" ? onEvent(JSON.parse(m.data)) : play(m.data));
  ws.onclose = (c) => {
    status(c.code === 1000 ? "ended" : `closed ${c.code}`, c.code === 1000 ? "" : "error");
    log(`socket closed ${c.code} ${c.reason}`);
    $("stop").disabled = true;
  };
  ws.onerror = () => log("socket error (a used or expired token is refused: mint a new one)");
  $("stop").disabled = false;
  history.replaceState(null, "", location.pathname);  // the token is single-use: drop it
}

function stop() {
  if (state.ws) state.ws.close(1000, "hung up");
  if (state.mic) state.mic.getTracks().forEach((t) => t.stop());
  stopPlayback();
}

$("start").onclick = () => start().catch((e) => { status("error", "error"); log(String(e)); });
$("stop").onclick = stop;
meter();
