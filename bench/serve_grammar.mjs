// Decode speed of `spud serve` with and without a grammar: one stream at a time, the same prompt, seeded
// sampling, through the official openai client. Starts its own server.
//
//   node bench/serve_grammar.mjs --spud build/spud --model /tmp/l1b-q4_0.gguf [--threads 2] [--tokens 64]
//        [--repeat 5] [--schema bench/nested_schema.json]
//
// Modes: no constraint; response_format json_schema (the nested object schema of the mask benchmark);
// response_format json_object. Per mode and run: decode tokens/s = (completion_tokens - 1) / (time from the
// first chunk, which comes with the first token, to the end of the stream), so the prompt's prefill is
// left out. Modes alternate run by run; the fastest of --repeat runs is reported (a shared machine
// disturbs the others), with the mean.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

import { args, root, startServer } from './serve_lib.mjs';

const spud = args.spud ?? resolve(root, 'build/spud');
const model = args.model ?? '/tmp/l1b-q4_0.gguf';
const threads = args.threads ?? '2';
const tokens = Number(args.tokens ?? 64);
const repeat = Number(args.repeat ?? 5);
const schema = JSON.parse(readFileSync(args.schema ?? resolve(root, 'bench/nested_schema.json'), 'utf8'));

const server = await startServer(spud, ['-m', model, '-t', threads, '--parallel', '1', '--ctx-size', '1024']);
const c = server.client;
const messages = [{ role: 'user', content: 'Give me the order as JSON.' }];

async function run(extra, seed) {
  const s = await c.chat.completions.create({ model: 'm', messages, max_tokens: tokens, seed, temperature: 1, stream: true,
    stream_options: { include_usage: true }, ...extra });
  let first, usage;
  for await (const ch of s) {
    if (first === undefined) first = performance.now();
    if (ch.usage) usage = ch.usage;
  }
  const dt = (performance.now() - first) / 1000;
  return { n: usage.completion_tokens, tps: (usage.completion_tokens - 1) / dt };
}

const modes = [
  ['none', {}],
  ['json_schema (nested)', { response_format: { type: 'json_schema', json_schema: { name: 'order', schema, strict: true } } }],
  ['json_object', { response_format: { type: 'json_object' } }],
];
await run({}, 0); // warm up (and build the grammar vocabulary once)
await run(modes[1][1], 0);
console.log(`model ${model}, ${threads} threads, up to ${tokens} tokens, best / mean of ${repeat}`);
console.log('| mode | tokens (mean) | decode tok/s best | mean |\n|---|---:|---:|---:|');
const results = modes.map(() => []);
for (let i = 0; i < repeat; i++) // alternating, so that a slow spell of the machine hits every mode
  for (const [k, [, extra]] of modes.entries()) results[k].push(await run(extra, i + 1));
for (const [k, [name]] of modes.entries()) {
  const rs = results[k];
  const mean = (f) => rs.reduce((a, r) => a + f(r), 0) / rs.length;
  console.log(`| ${name} | ${mean((r) => r.n).toFixed(1)} | ${Math.max(...rs.map((r) => r.tps)).toFixed(1)} | ${mean((r) => r.tps).toFixed(1)} |`);
}
await server.stop();
