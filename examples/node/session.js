#!/usr/bin/env node
// A whole voicegrid session from Node.js, with nothing but Redis commands (docs/streams.md):
// create it (one XADD to <ns>:create), stream caller audio (a WAV or a generated tone), print
// every event, answer the model's tool call, update the config, survive a restart of this
// process's Redis connections by resuming from the last event id, and end the session.
//
//   npm ci && node session.js [--redis URL] [--namespace NS] [--provider openai]
//        [--model gpt-realtime] [--wav caller.wav] [--session-id ID] [--timeout-s 30]
//
// Events go to stdout as JSON lines; the last line is {"summary": {...}}. Exit code 0 when
// every step worked, 1 otherwise (the summary's "errors" says what failed), 2 on bad arguments.
"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const Redis = require("ioredis");

const SAMPLE_RATES = [8000, 16000, 24000, 48000];
const FRAME_MS = 20;

// --- arguments -------------------------------------------------------------------------------

function usage(message) {
  process.stderr.write(`session.js: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const options = {
    redis: process.env.REDIS_URL || "redis://127.0.0.1:6379/0",
    namespace: process.env.VOICEGRID_NAMESPACE || "voicegrid",
    provider: "openai",
    model: "gpt-realtime",
    wav: null,
    sessionId: crypto.randomUUID().replaceAll("-", ""),
    timeoutS: 30,
  };
  const names = {
    "--redis": "redis", "--namespace": "namespace", "--provider": "provider",
    "--model": "model", "--wav": "wav", "--session-id": "sessionId", "--timeout-s": "timeoutS",
  };
  for (let i = 0; i < argv.length; i += 2) {
    const name = names[argv[i]];
    if (!name) usage(`unknown argument ${JSON.stringify(argv[i])}; expected one of ${Object.keys(names).join(", ")}`);
    if (i + 1 >= argv.length) usage(`${argv[i]} needs a value`);
    options[name] = argv[i + 1];
  }
  options.timeoutS = Number(options.timeoutS);
  if (!(options.timeoutS > 0)) usage(`--timeout-s ${JSON.stringify(argv[argv.indexOf("--timeout-s") + 1])} is invalid; expected seconds > 0`);
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(options.sessionId)) {
    usage(`--session-id ${JSON.stringify(options.sessionId)} is invalid; expected 1-64 characters of [A-Za-z0-9_.-]`);
  }
  return options;
}

// --- caller audio ----------------------------------------------------------------------------

// A mono PCM16 WAV file: { rate, pcm }; exits with a clear message on anything else.
function readWav(path) {
  let data;
  try {
    data = fs.readFileSync(path);
  } catch (err) {
    usage(`cannot read --wav ${JSON.stringify(path)}: ${err.message}`);
  }
  if (data.length < 12 || data.toString("ascii", 0, 4) !== "RIFF" || data.toString("ascii", 8, 12) !== "WAVE") {
    usage(`--wav ${JSON.stringify(path)} is not a RIFF/WAVE file`);
  }
  let format = null;
  for (let at = 12; at + 8 <= data.length;) {
    const id = data.toString("ascii", at, at + 4);
    const size = data.readUInt32LE(at + 4);
    if (id === "fmt ") {
      format = { tag: data.readUInt16LE(at + 8), channels: data.readUInt16LE(at + 10), rate: data.readUInt32LE(at + 12), bits: data.readUInt16LE(at + 22) };
    } else if (id === "data") {
      if (!format || format.tag !== 1 || format.channels !== 1 || format.bits !== 16 || !SAMPLE_RATES.includes(format.rate)) {
        usage(`--wav ${JSON.stringify(path)} is ${JSON.stringify(format)}; expected PCM (tag 1), mono, 16 bits, at one of ${SAMPLE_RATES} Hz`);
      }
      return { rate: format.rate, pcm: data.subarray(at + 8, at + 8 + size) };
    }
    at += 8 + size + (size % 2);
  }
  usage(`--wav ${JSON.stringify(path)} has no data chunk`);
}

// A spoken-like tone (a 220 Hz fundamental with harmonics) for `seconds`, PCM16 little-endian.
function tone(rate, seconds) {
  const n = Math.round(rate * seconds);
  const pcm = Buffer.alloc(n * 2);
  for (let i = 0; i < n; i++) {
    const t = i / rate;
    const v = 0.6 * Math.sin(2 * Math.PI * 220 * t) + 0.3 * Math.sin(2 * Math.PI * 440 * t) + 0.1 * Math.sin(2 * Math.PI * 660 * t);
    pcm.writeInt16LE(Math.round(8000 * v), i * 2);
  }
  return pcm;
}

function frames(pcm, rate) {
  const step = (rate * 2 * FRAME_MS) / 1000;
  const out = [];
  for (let at = 0; at + step <= pcm.length; at += step) out.push(pcm.subarray(at, at + step));
  return out;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
const nowUs = () => String(Date.now() * 1000);

// --- the session -----------------------------------------------------------------------------

class Session {
  constructor(options) {
    this.options = options;
    const ns = options.namespace;
    const sid = options.sessionId;
    this.keys = {
      create: `${ns}:create`,
      rejected: `${ns}:create:rejected`,
      input: `${ns}:{${sid}}:in`,
      output: `${ns}:{${sid}}:out`,
    };
    this.lastId = "0-0"; // what an application persists to resume after a restart
    this.entryIds = []; // every output entry read, in order (events and acks)
    this.events = []; // [name, payload, id]
    this.acks = new Map(); // ref -> ack
    this.waiters = new Set();
    this.errors = [];
    this.audioOutBytes = 0;
    this.framesSent = 0;
    this.toolCalls = [];
    this.toolResponses = 0;
  }

  connect() {
    // one connection for the blocking reads, one for writes (a blocked XREAD holds its connection)
    const options = { lazyConnect: false, maxRetriesPerRequest: 3, connectTimeout: 5000 };
    this.reader = new Redis(this.options.redis, options);
    this.writer = new Redis(this.options.redis, options);
    for (const conn of [this.reader, this.writer]) conn.on("error", () => {}); // reported by the awaited calls
    this.reading = this.readLoop(this.reader);
  }

  async close() {
    this.stopped = true;
    this.reader.disconnect(); // rejects the pending XREAD: the read loop ends
    await this.reading;
    await this.writer.quit();
  }

  async readLoop(reader) {
    this.stopped = false;
    while (!this.stopped) {
      let reply;
      try {
        reply = await reader.xreadBuffer("COUNT", 200, "BLOCK", 500, "STREAMS", this.keys.output, this.lastId);
      } catch (err) {
        if (this.stopped) return;
        this.errors.push(`XREAD failed: ${err.message}`);
        await sleep(200);
        continue;
      }
      for (const [, entries] of reply || []) {
        for (const [rawId, flat] of entries) this.onEntry(rawId.toString(), flat);
      }
    }
  }

  onEntry(id, flat) {
    this.lastId = id;
    this.entryIds.push(id);
    const f = {};
    for (let i = 0; i + 1 < flat.length; i += 2) f[flat[i].toString()] = flat[i + 1];
    if (String(f.v) !== "1") {
      this.errors.push(`entry ${id} has schema version ${f.v}; this example reads version 1`);
    } else if (String(f.k) === "k") {
      const ack = { id, ref: String(f.ref), ok: String(f.ok) === "1", body: JSON.parse(f.b) };
      this.acks.set(ack.ref, ack);
      print({ id, ack: ack.ref, ok: ack.ok, body: ack.body });
    } else if (String(f.e) === "audio") {
      const payload = { bytes: f.d.length, sample_rate: Number(f.sr), response_id: f.rid ? String(f.rid) : null };
      this.audioOutBytes += payload.bytes;
      this.events.push(["audio", payload, id]);
      print({ id, event: "audio", ...payload });
    } else {
      const name = String(f.e);
      const payload = JSON.parse(f.b);
      this.events.push([name, payload, id]);
      print({ id, event: name, ...payload });
      if (name === "tool-call") this.answerToolCall(payload);
    }
    for (const waiter of [...this.waiters]) waiter();
  }

  // Resolve once `predicate()` is true; reject after the timeout, naming what was awaited.
  waitFor(what, predicate, timeoutS = this.options.timeoutS) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const value = predicate();
        if (!value) return;
        this.waiters.delete(check);
        clearTimeout(timer);
        resolve(value);
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`no ${what} within ${timeoutS}s`));
      }, timeoutS * 1000);
      this.waiters.add(check);
      check();
    });
  }

  ofName(name) {
    return this.events.filter(([n]) => n === name);
  }

  // --- writing (docs/streams.md, "Entries") --------------------------------------------------

  async create(config) {
    const o = this.options;
    const started = Date.now();
    const requestId = await this.writer.xadd(this.keys.create, "MAXLEN", "~", 10000, "*",
      "v", "1", "sid", o.sessionId, "provider", o.provider, "model", o.model,
      "config", JSON.stringify(config));
    let ack;
    try {
      ack = await this.waitFor(`answer to create request ${requestId}`, () => this.acks.get(requestId));
    } catch (err) {
      // no session of its own (invalid or taken id): the answer is on <ns>:create:rejected
      const rejected = await this.writer.xrange(this.keys.rejected, requestId, "+");
      for (const [, flat] of rejected) {
        const f = {};
        for (let i = 0; i + 1 < flat.length; i += 2) f[flat[i]] = flat[i + 1];
        if (f.req === requestId) throw new Error(`create request rejected: ${f.code}: ${f.message}`);
      }
      throw err;
    }
    if (!ack.ok) throw new Error(`create request failed: ${ack.body.type}: ${ack.body.message}`);
    return { requestId, createdMs: Date.now() - started, capabilities: ack.body.capabilities };
  }

  command(type, body) {
    return this.writer.xadd(this.keys.input, "MAXLEN", "~", 500, "*",
      "v", "1", "ts", nowUs(), "k", "c", "c", type, "b", JSON.stringify(body));
  }

  async request(type, body) {
    const id = await this.command(type, body);
    const ack = await this.waitFor(`ack of ${type} ${id}`, () => this.acks.get(id));
    if (!ack.ok) throw new Error(`${type} failed: ${ack.body.type}: ${ack.body.message}`);
    return ack;
  }

  answerToolCall(call) {
    this.toolCalls.push({ call_id: call.call_id, name: call.name, arguments: call.arguments });
    const output = call.name === "get_weather"
      ? { city: call.arguments.city, temp_c: 21, sky: "sunny" }
      : { error: `unknown tool ${call.name}` };
    this.command("tool_response", { responses: [{ call_id: call.call_id, output, is_error: "error" in output }] })
      .then(() => { this.toolResponses += 1; })
      .catch((err) => this.errors.push(`tool_response failed: ${err.message}`));
  }

  // Caller audio in real time: 20 ms frames, each XADDed when its time comes.
  async stream(pcmFrames) {
    const start = Date.now();
    for (let i = 0; i < pcmFrames.length; i++) {
      await sleep(start + i * FRAME_MS - Date.now());
      await this.writer.xadd(this.keys.input, "MAXLEN", "~", 500, "*",
        "v", "1", "ts", nowUs(), "k", "a", "d", pcmFrames[i]);
      this.framesSent += 1;
    }
  }
}

function print(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const wav = options.wav ? readWav(options.wav) : null;
  const rate = wav ? wav.rate : 24000;
  const silence = Buffer.alloc(Math.round(rate * 0.8) * 2);
  const speech = wav ? wav.pcm : tone(rate, 1.0);
  const turn = frames(Buffer.concat([speech, silence]), rate);
  const config = {
    instructions: "You are a weather assistant. Be brief.",
    input_audio: { encoding: "pcm16", sample_rate: rate },
    output_audio: { encoding: "pcm16", sample_rate: 24000 },
    tools: [{
      name: "get_weather",
      description: "The current weather in a city",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    }],
  };

  const session = new Session(options);
  const summary = { session_id: options.sessionId };
  session.connect();
  try {
    // 1. create: one XADD; the answer is the ack ref=<request id> on the output stream
    const created = await session.create(config);
    summary.request_id = created.requestId;
    summary.created_ms = created.createdMs;
    summary.config_update_strategy = created.capabilities.config_update;

    // 2. the caller's first turn; the model calls get_weather (answered in onEntry) and then
    //    speaks the result: wait for the response that follows the tool response
    await session.stream(turn);
    await session.waitFor("tool call", () => session.toolCalls.length > 0);
    // response-done 1 ends the response that made the call, 2 the one that speaks its result
    await session.waitFor("reply to the tool result", () => session.ofName("response-done").length >= 2);

    // 3. update the config: acknowledged once the provider applied it; config-updated says how
    await session.request("update_config", { update: { instructions: "Answer in French." } });
    const updated = await session.waitFor("config-updated", () => session.ofName("config-updated")[0]);
    summary.config_updated = updated[1].strategy;

    // 4. "restart": speak the second turn, drop both Redis connections while the model answers,
    //    reconnect with new ones and resume after the last event id this process had read
    await session.stream(turn);
    const before = session.lastId;
    const readBefore = session.entryIds.length;
    await session.close();
    await sleep(1500);
    const reconnectedAt = Date.now();
    session.connect();
    await session.waitFor("reply to the second turn", () => session.ofName("response-done").length >= 3);
    const resumed = session.entryIds.slice(readBefore);
    summary.restart = {
      resumed_after: before,
      first_id_after: resumed[0] || null,
      backlog: resumed.filter((id) => Number(id.split("-")[0]) < reconnectedAt).length,
    };

    // 5. end it: the disconnect ack and a closed event are the last entries
    await session.request("disconnect", {});
    const closed = await session.waitFor("closed event", () => session.ofName("closed")[0]);
    summary.closed = { reason: closed[1].reason, code: closed[1].code };

    // nothing lost or repeated across the restart: what this process read is the whole stream
    const all = (await session.writer.xrange(session.keys.output, "-", "+")).map(([id]) => id);
    summary.ids_match = JSON.stringify(all) === JSON.stringify(session.entryIds);
  } catch (err) {
    session.errors.push(err.message);
  } finally {
    await session.close().catch(() => {});
  }
  const counts = {};
  for (const [name] of session.events) counts[name] = (counts[name] || 0) + 1;
  Object.assign(summary, {
    events: counts,
    entry_ids: session.entryIds,
    tool_calls: session.toolCalls,
    tool_responses: session.toolResponses,
    transcripts: session.events.filter(([n, p]) => n === "transcript" && p.final).map(([, p]) => `${p.role}: ${p.text}`),
    frames_sent: session.framesSent,
    audio_out_bytes: session.audioOutBytes,
    errors: session.errors,
  });
  print({ summary });
  process.exitCode = session.errors.length || !summary.ids_match ? 1 : 0;
}

main();
