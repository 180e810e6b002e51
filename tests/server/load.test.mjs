// A bounded load test: many requests, many at once; every answer must be right and memory must come back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { A, PID_A, SANITIZED, NO_SPECIAL, client, metrics, rssKiB, threads, waitFor } from './common.mjs';

const TOTAL = Number(process.env.SPUD_LOAD_REQUESTS ?? 500);
const CONCURRENCY = Number(process.env.SPUD_LOAD_CONCURRENCY ?? 32);
const c = client();
const prompts = Array.from({ length: 12 }, (_, i) => `Load test prompt ${i}: ${'xyz'.repeat(i)}`);
const body = (i) => ({ model: 'm', messages: [{ role: 'user', content: prompts[i % prompts.length] }], temperature: 0, max_tokens: 12, logit_bias: NO_SPECIAL });

async function one(i, want) {
  if (i % 2) {
    const r = await c.chat.completions.create(body(i));
    assert.equal(r.choices[0].message.content, want[i % prompts.length], `request ${i}`);
    assert.equal(r.usage.completion_tokens, 12);
  } else {
    const s = await c.chat.completions.create({ ...body(i), stream: true, stream_options: { include_usage: true } });
    let text = '', usage;
    for await (const ch of s) {
      if (ch.usage) usage = ch.usage;
      else text += ch.choices[0].delta.content ?? '';
    }
    assert.equal(text, want[i % prompts.length], `request ${i}`);
    assert.equal(usage.completion_tokens, 12);
  }
}

async function idle() {
  await waitFor('idle connections to close', async () => threads(PID_A) <= 8, 15000);
}

async function run(n, conc, want) {
  let next = 0, done = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      await one(i, want);
      done++;
    }
  };
  await Promise.all(Array.from({ length: conc }, worker));
  return done;
}

test(`load: ${TOTAL} requests, ${CONCURRENCY} at once`, async () => {
  const want = [];
  for (let i = 0; i < prompts.length; i++) want.push((await c.chat.completions.create(body(i))).choices[0].message.content);
  await run(Math.max(250, 2 * CONCURRENCY), CONCURRENCY, want); // warm-up: allocator arenas, every slot's cache
  // Memory is compared with the server idle: the client's keep-alive connections (each a server
  // thread with its buffers) close after 4 s without use.
  await idle();
  const rss0 = rssKiB(PID_A), th0 = threads(PID_A);
  const m0 = await metrics();
  const t0 = performance.now();
  const done = await run(TOTAL, CONCURRENCY, want);
  const secs = (performance.now() - t0) / 1000;
  const m1 = await metrics();
  await idle();
  const rss1 = rssKiB(PID_A), th1 = threads(PID_A);
  assert.equal(done, TOTAL);
  const gen = m1.spud_generated_tokens_total - m0.spud_generated_tokens_total;
  assert.equal(gen, TOTAL * 12);
  assert.equal(m1.spud_active_sequences, 0);
  assert.equal(m1.spud_queue_depth, 0);
  const ok = m1['spud_requests_total{route="/v1/chat/completions",status="200"}'] - m0['spud_requests_total{route="/v1/chat/completions",status="200"}'];
  assert.equal(ok, TOTAL);
  const ttft = (m1.spud_time_to_first_token_seconds_sum - m0.spud_time_to_first_token_seconds_sum) /
    (m1.spud_time_to_first_token_seconds_count - m0.spud_time_to_first_token_seconds_count);
  console.log(`load: ${TOTAL} requests (${CONCURRENCY} concurrent) in ${secs.toFixed(2)} s, ${(TOTAL / secs).toFixed(1)} req/s, ` +
    `${(gen / secs).toFixed(0)} generated tok/s, mean TTFT ${(ttft * 1000).toFixed(1)} ms, ` +
    `RSS ${rss0} -> ${rss1} KiB (${(((rss1 - rss0) / rss0) * 100).toFixed(1)}%), threads ${th0} -> ${th1}`);
  if (!SANITIZED) assert.ok(Math.abs(rss1 - rss0) <= 0.1 * rss0, `RSS ${rss0} -> ${rss1} KiB`);
});
