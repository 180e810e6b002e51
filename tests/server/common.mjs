// Shared helpers for the live `spud serve` tests (run by tests/script_server.sh).
import OpenAI from 'openai';
import { readFileSync } from 'node:fs';

// Server A: --parallel 8 --ctx-size 1024, API keys, Qwen2.5's chat template. Server B: --parallel 1 --max-queue 1, no keys, slower model.
export const A = process.env.SPUD_URL_A;
export const B = process.env.SPUD_URL_B;
export const KEY = process.env.SPUD_KEY;
export const FILE_KEY = process.env.SPUD_FILE_KEY;
export const PID_A = Number(process.env.SPUD_PID_A);
export const PID_B = Number(process.env.SPUD_PID_B);
export const SANITIZED = process.env.SPUD_SANITIZED === '1';
// Special tokens of gen-model's vocabulary (BOS, <|im_start|>, <|im_end|>): biased away when a test needs
// a long generation that must not end early.
export const NO_SPECIAL = { 509: -100, 510: -100, 511: -100 };

export function client(base = A, opts = {}) {
  return new OpenAI({ baseURL: base + '/v1', apiKey: base === A ? KEY : 'none', maxRetries: 0, timeout: 120000, ...opts });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Prometheus text -> { 'name{labels}': value }
export async function metrics(base = A) {
  const r = await fetch(base + '/metrics', { headers: base === A ? { Authorization: 'Bearer ' + KEY } : {} });
  if (r.status !== 200) throw new Error('metrics: HTTP ' + r.status);
  const out = {};
  for (const line of (await r.text()).split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

export async function waitFor(what, fn, ms = 5000) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error('timed out waiting for ' + what);
    await sleep(10);
  }
}

export function threads(pid) {
  return Number(/Threads:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
}

export function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]);
}

export async function chatText(c, body) {
  const r = await c.chat.completions.create(body);
  return r.choices[0].message.content;
}

// Collect a chat stream: per-choice text, finish reasons, the usage chunk, chunk count.
export async function collectChat(stream) {
  const text = [], finish = [];
  let usage, chunks = 0, usageNullEverywhere = true;
  for await (const ch of stream) {
    chunks++;
    if (ch.usage) usage = ch.usage;
    else if (ch.usage !== null && ch.usage !== undefined) usageNullEverywhere = false;
    for (const c of ch.choices) {
      text[c.index] = (text[c.index] ?? '') + (c.delta?.content ?? c.text ?? '');
      if (c.finish_reason) finish[c.index] = c.finish_reason;
    }
  }
  return { text, finish, usage, chunks, usageNullEverywhere };
}

export async function raw(base, path, { method = 'POST', body, headers = {}, key = base === A ? KEY : undefined } = {}) {
  const h = { 'Content-Type': 'application/json', ...headers };
  if (key) h.Authorization = 'Bearer ' + key;
  const r = await fetch(base + path, { method, headers: h, body: typeof body === 'string' || body === undefined || body instanceof ReadableStream || Buffer.isBuffer(body) ? body : JSON.stringify(body), duplex: 'half' });
  const text = await r.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: r.status, headers: r.headers, text, json };
}

// OpenAI's error shape: {"error": {"message", "type", "param", "code"}}
export function assertErrorShape(assert, res, status, param) {
  assert.equal(res.status, status, res.text);
  assert.ok(res.json && res.json.error, 'error JSON: ' + res.text);
  const e = res.json.error;
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  assert.equal(typeof e.type, 'string');
  assert.ok('param' in e && 'code' in e, res.text);
  if (param !== undefined) assert.equal(e.param, param, res.text);
}
