// Several prompts in one /v1/completions request, parallel_tool_calls false without a grammar,
// reasoning token counts, and thinking before a constrained answer (servers A, S and R of
// tests/script_server.sh).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { A, NO_SPECIAL, client, collectChat, raw, assertErrorShape } from './common.mjs';

const S = process.env.SPUD_URL_S;
const R = process.env.SPUD_URL_R;

test('completions: several prompts; choice i*n+j is prompt i choice j, equal to single-prompt requests', async () => {
  const c = client();
  const prompts = ['Once upon a time', 'The weather today', [1, 2, 3, 40, 50], 'Hello'];
  const body = { model: 'm', max_tokens: 8, seed: 7, temperature: 1, n: 2, logit_bias: NO_SPECIAL };
  const singles = [];
  for (const p of prompts) singles.push(await c.completions.create({ ...body, prompt: p }));
  const r = await c.completions.create({ ...body, prompt: prompts });
  assert.equal(r.choices.length, prompts.length * 2);
  let ptok = 0, ctok = 0;
  for (const [i, one] of singles.entries()) {
    ptok += one.usage.prompt_tokens;
    ctok += one.usage.completion_tokens;
    for (let j = 0; j < 2; j++) {
      const got = r.choices[i * 2 + j];
      assert.equal(got.index, i * 2 + j);
      assert.equal(got.text, one.choices[j].text, `prompt ${i} choice ${j}`);
      assert.equal(got.finish_reason, one.choices[j].finish_reason);
    }
  }
  assert.equal(r.usage.prompt_tokens, ptok);
  assert.equal(r.usage.completion_tokens, ctok);
  assert.equal(r.usage.total_tokens, ptok + ctok);
  // streamed: each chunk carries its choice's index
  const s = await collectChat(await c.completions.create({ ...body, prompt: prompts, stream: true, stream_options: { include_usage: true } }));
  assert.deepEqual(s.text, r.choices.map((x) => x.text));
  assert.deepEqual(s.finish, r.choices.map((x) => x.finish_reason));
  assert.equal(s.usage.prompt_tokens, ptok);
  assert.equal(s.usage.completion_tokens, ctok);
  // echo is per prompt
  const e = await c.completions.create({ ...body, n: 1, prompt: ['Alpha', 'Beta'], echo: true });
  assert.ok(e.choices[0].text.startsWith('Alpha'), e.choices[0].text);
  assert.ok(e.choices[1].text.startsWith('Beta'), e.choices[1].text);
  // greedy, with logprobs: per prompt as alone
  const g = { model: 'm', max_tokens: 5, temperature: 0, logprobs: 1 };
  const two = await c.completions.create({ ...g, prompt: [[5, 6, 7], 'abc'] });
  const g0 = await c.completions.create({ ...g, prompt: [5, 6, 7] });
  const g1 = await c.completions.create({ ...g, prompt: 'abc' });
  assert.equal(two.choices[0].text, g0.choices[0].text);
  assert.equal(two.choices[1].text, g1.choices[0].text);
  assert.deepEqual(two.choices[1].logprobs.tokens, g1.choices[0].logprobs.tokens);
});

test('completions: 64 prompts at most; bad prompt arrays are a 400 naming the field', async () => {
  const c = new OpenAI({ baseURL: S + '/v1', apiKey: 'none', maxRetries: 0, timeout: 120000 });
  const many = Array.from({ length: 64 }, (_, i) => `Prompt number ${i}`);
  const r = await c.completions.create({ model: 'm', prompt: many, max_tokens: 2, temperature: 0 });
  assert.equal(r.choices.length, 64);
  assert.deepEqual(r.choices.map((x) => x.index), many.map((_, i) => i));
  const last = await c.completions.create({ model: 'm', prompt: many[63], max_tokens: 2, temperature: 0 });
  assert.equal(r.choices[63].text, last.choices[0].text);
  assertErrorShape(assert, await raw(S, '/v1/completions', { body: { prompt: [...many, 'x'] } }), 400, 'prompt');
  assertErrorShape(assert, await raw(S, '/v1/completions', { body: { prompt: [] } }), 400, 'prompt');
  assertErrorShape(assert, await raw(S, '/v1/completions', { body: { prompt: ['a', 5] } }), 400, 'prompt');
  assertErrorShape(assert, await raw(S, '/v1/completions', { body: { prompt: ['a', [1, 'x']] } }), 400, 'prompt');
  assertErrorShape(assert, await raw(S, '/v1/completions', { body: { prompt: ['a', []] } }), 400, 'prompt');
  assertErrorShape(assert, await raw(S, '/v1/completions', { body: { prompt: ['a', [99999999]] } }), 400, 'prompt[1]');
  assertErrorShape(assert, await raw(S, '/v1/completions', { body: { prompt: ['a', 'b'], n: 5 } }), 400, 'n');
  // the server still answers
  assert.equal((await c.completions.create({ model: 'm', prompt: 'ok', max_tokens: 1 })).choices.length, 1);
});
