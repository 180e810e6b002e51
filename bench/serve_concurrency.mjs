// Aggregate generation speed of `spud serve` at 1, 2, 4 and 8 concurrent streams, and time to first
// token, through the official openai client. Starts its own server.
//
//   node bench/serve_concurrency.mjs --spud build/spud --model /tmp/l1b-q4_0.gguf [--threads 2]
//        [--tokens 64] [--streams 1,2,4,8] [--parallel 8] [--ctx 512] [--prefill-chunk 64] [--repeat 1]
//
// For each N, N chat streams start at once (distinct prompts, greedy, max_tokens = --tokens) and run to
// the end. Reported per N: aggregate generated tokens/s over the whole round (prefill included), the
// decode rate while all N streams were generating (tokens counted between the last stream's first token
// and the first stream's end, over that window), and time to first token (mean / max). Then "TTFT under
// load": a new request's time to first token while N-1 streams are generating. With --repeat R each
// round runs R times and the fastest is reported (on a shared machine the best run is the least disturbed).
import { resolve } from 'node:path';

import { args, root, startServer } from './serve_lib.mjs';

const spud = args.spud ?? resolve(root, 'build/spud');
const model = args.model ?? '/tmp/l1b-q4_0.gguf';
const threads = args.threads ?? '2';
const tokens = Number(args.tokens ?? 64);
const streams = (args.streams ?? '1,2,4,8').split(',').map(Number);
const parallel = args.parallel ?? String(Math.max(...streams));
const ctx = args.ctx ?? '512';
const chunk = args['prefill-chunk'] ?? '64';
const repeat = Number(args.repeat ?? 1);

const server = await startServer(spud, ['-m', model, '-t', threads, '--parallel', parallel, '--ctx-size', ctx,
  '--prefill-chunk', chunk]);
const c = server.client;
const prompt = (i) => [{ role: 'user', content: `Stream ${i}: write a long story about a lighthouse keeper and the sea, chapter ${i}.` }];

async function stream(i, n, onFirst = () => {}) {
  const t0 = performance.now();
  // logprobs: every token gets a chunk, even one whose text is empty (random models make many)
  const s = await c.chat.completions.create({ model: 'm', messages: prompt(i), max_tokens: n, temperature: 0, logprobs: true,
    stream: true, stream_options: { include_usage: true } });
  let first, usage;
  const times = [];
  for await (const ch of s) {
    if (ch.usage) usage = ch.usage;
    else {
      const k = ch.choices[0]?.logprobs?.content?.length ?? 0;
      const t = performance.now();
      if (k && first === undefined) {
        first = t;
        onFirst();
      }
      for (let j = 0; j < k; j++) times.push(t);
    }
  }
  return { t0, first, end: performance.now(), usage, times };
}

// warm up: page the weights in, start the threads
await stream(100, 8);

console.log(`model ${model}, ${threads} threads, ${tokens} tokens per stream, --parallel ${parallel}, --prefill-chunk ${chunk}`);
console.log('streams | aggregate tok/s | all-generating tok/s | TTFT mean / max (s) | per-stream tok/s');
const rows = {};
let roundNo = 0;
async function round(n) {
  const base = 1000 * ++roundNo; // new prompts every round: no prompt is served from the cache
  const t0 = performance.now();
  const res = await Promise.all(Array.from({ length: n }, (_, i) => stream(base + i, tokens)));
  return { t0, res, agg: res.reduce((a, r) => a + r.usage.completion_tokens, 0) / ((Math.max(...res.map((r) => r.end)) - t0) / 1000) };
}

for (const n of streams) {
  let best;
  for (let k = 0; k < repeat; k++) {
    const r = await round(n);
    if (!best || r.agg > best.agg) best = r;
  }
  const { t0, res } = best;
  const end = Math.max(...res.map((r) => r.end));
  const gen = res.reduce((a, r) => a + r.usage.completion_tokens, 0);
  const agg = gen / ((end - t0) / 1000);
  const wStart = Math.max(...res.map((r) => r.first)), wEnd = Math.min(...res.map((r) => r.end));
  const inWin = res.reduce((a, r) => a + r.times.filter((t) => t > wStart && t <= wEnd).length, 0);
  const steady = wEnd > wStart ? inWin / ((wEnd - wStart) / 1000) : NaN;
  const ttft = res.map((r) => (r.first - r.t0) / 1000);
  const per = res.map((r) => (r.usage.completion_tokens - 1) / ((r.end - r.first) / 1000));
  rows[n] = { agg, steady };
  console.log(`${String(n).padStart(7)} | ${agg.toFixed(2).padStart(15)} | ${steady.toFixed(2).padStart(20)} | ` +
    `${(ttft.reduce((a, b) => a + b) / n).toFixed(2)} / ${Math.max(...ttft).toFixed(2)}`.padStart(19) +
    ` | ${(per.reduce((a, b) => a + b) / n).toFixed(2)}`);
}
if (rows[1] && rows[4]) console.log(`4 streams / 1 stream: aggregate ${(rows[4].agg / rows[1].agg).toFixed(2)}x, all-generating ${(rows[4].steady / rows[1].steady).toFixed(2)}x`);

// TTFT under load: a new request while N-1 long streams generate
for (const n of streams.filter((x) => x > 1)) {
  const started = [];
  const bg = Array.from({ length: n - 1 }, (_, i) => stream(200 + i, tokens * 4, () => started.push(i)));
  while (started.length < n - 1) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 300));
  const probe = await stream(300 + n, 4);
  await Promise.all(bg);
  console.log(`TTFT of a new request while ${n - 1} streams generate: ${((probe.first - probe.t0) / 1000).toFixed(2)} s`);
}
await server.stop();
