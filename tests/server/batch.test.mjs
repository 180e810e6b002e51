// Several prompts in one /v1/completions request, parallel_tool_calls false without a grammar,
// reasoning token counts, and thinking before a constrained answer (servers A, S and R of
// tests/script_server.sh).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { NO_SPECIAL, client, collectChat, raw, assertErrorShape, metrics } from './common.mjs';

const S = process.env.SPUD_URL_S;
const R = process.env.SPUD_URL_R;
const Q = process.env.SPUD_URL_Q;

// Tokens generated inside a think block, replayed over their texts: a token counts by the state before it.
function reasoningCount(tokens, inside, open = '<think>', close = '</think>') {
  let text = '', pos = 0, n = 0;
  for (const t of tokens) {
    if (inside) n++;
    text += t;
    for (;;) {
      const mk = inside ? close : open, i = text.indexOf(mk, pos);
      if (i < 0) break;
      pos = i + mk.length;
      inside = !inside;
    }
  }
  return n;
}

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
  // every prompt is checked before any runs
  const before = (await metrics(S))['spud_prompt_tokens_total'];
  assertErrorShape(assert, await raw(S, '/v1/completions', { body: { prompt: ['a', [99999999]] } }), 400, 'prompt[1]');
  assertErrorShape(assert, await raw(S, '/v1/completions', { body: { prompt: ['a', Array(5000).fill(7)] } }), 400, 'prompt[1]');
  assert.equal((await metrics(S))['spud_prompt_tokens_total'], before);
  assertErrorShape(assert, await raw(S, '/v1/completions', { body: { prompt: ['a', 'b'], n: 5 } }), 400, 'n');
  // the server still answers
  assert.equal((await c.completions.create({ model: 'm', prompt: 'ok', max_tokens: 1 })).choices.length, 1);
});

// The tokens up to and including the first whose text completes `marker` (all of them if none does).
function tokensThrough(tokens, marker) {
  let text = '';
  for (const [i, t] of tokens.entries()) {
    text += t;
    if (text.includes(marker)) return i + 1;
  }
  return tokens.length;
}

test('parallel_tool_calls false without a grammar on the calls: the sequence ends after the first call', async () => {
  const c = new OpenAI({ baseURL: S + '/v1', apiKey: 'none', maxRetries: 0, timeout: 120000 });
  const tools = ['get_weather', 'get_time'].map((name) => ({
    type: 'function', function: { name, parameters: { type: 'object', properties: { city: { type: 'string' } } } },
  }));
  // the grammar stands in for a model that makes two calls, then goes on talking
  const call = (name) => `"<tool_call>\\n{\\"name\\": \\"${name}\\", \\"arguments\\": {\\"city\\": \\"" [a-z]{2,6} "\\"}}\\n</tool_call>"`;
  const grammar = `root ::= ${call('get_weather')} "\\n" ${call('get_time')} "\\n" [a-z ]{300}\n`;
  const body = { model: 'm', messages: [{ role: 'user', content: 'Weather and time in Paris?' }], tools, grammar, seed: 3, max_tokens: 2000 };
  const all = await c.chat.completions.create(body);
  assert.deepEqual(all.choices[0].message.tool_calls.map((t) => t.function.name), ['get_weather', 'get_time']);
  const one = await c.chat.completions.create({ ...body, parallel_tool_calls: false, logprobs: true });
  const ch = one.choices[0];
  assert.equal(ch.finish_reason, 'tool_calls');
  assert.deepEqual(ch.message.tool_calls.map((t) => t.function.name), ['get_weather']);
  assert.equal(ch.message.tool_calls[0].function.arguments, all.choices[0].message.tool_calls[0].function.arguments);
  assert.equal(ch.message.content, null);
  // generation stopped right after the call (a step or a few may already run when the server sees it),
  // not after the 300 bytes of text that follow it
  const k = tokensThrough(ch.logprobs.content.map((t) => t.token), '</tool_call>');
  assert.equal(one.usage.completion_tokens, ch.logprobs.content.length);
  assert.ok(one.usage.completion_tokens >= k && one.usage.completion_tokens <= k + 40,
    `${one.usage.completion_tokens} tokens generated, the call ends at ${k} (all: ${all.usage.completion_tokens})`);
  assert.ok(all.usage.completion_tokens > k + 100, `${all.usage.completion_tokens} ${k} ${one.usage.completion_tokens}`);
  // streamed: the same one call
  const fin = await c.chat.completions.stream({ ...body, parallel_tool_calls: false }).finalChatCompletion();
  assert.deepEqual(fin.choices[0].message.tool_calls.map((t) => [t.function.name, t.function.arguments]),
    ch.message.tool_calls.map((t) => [t.function.name, t.function.arguments]));
  assert.equal(fin.choices[0].finish_reason, 'tool_calls');
  // Responses: one function_call item
  const rr = await c.responses.create({ model: 'm', input: 'Weather?', tools: tools.map((t) => ({ type: 'function', ...t.function })),
    grammar, seed: 3, max_output_tokens: 2000, parallel_tool_calls: false, store: false });
  assert.deepEqual(rr.output.filter((o) => o.type === 'function_call').map((o) => o.name), ['get_weather']);
  assert.ok(rr.usage.output_tokens < all.usage.completion_tokens - 100, JSON.stringify(rr.usage));
});

test('usage: reasoning_tokens counts the tokens inside the think block', async () => {
  const c = new OpenAI({ baseURL: R + '/v1', apiKey: 'none', maxRetries: 0, timeout: 120000 });
  const user = [{ role: 'user', content: 'What is the weather in Paris?' }];
  const grammar = 'root ::= "Let me see" [a-z ]{0,12} "</think>" "\\n\\n" "Answer: " [0-9]{1,3}\n';
  for (const seed of [1, 2, 3]) {
    // the generation prompt opens <think>: the tokens through the one that completes </think> are reasoning
    const r = await c.chat.completions.create({ model: 'm', messages: user, seed, grammar, max_tokens: 200, logprobs: true });
    const toks = r.choices[0].logprobs.content.map((t) => t.token);
    const k = reasoningCount(toks, true);
    assert.equal(k, tokensThrough(toks, '</think>'));
    assert.ok(k < toks.length);
    assert.equal(r.usage.completion_tokens, toks.length);
    assert.equal(r.usage.completion_tokens_details.reasoning_tokens, k, toks.join('|'));
    const s = await collectChat(await c.chat.completions.create({ model: 'm', messages: user, seed, grammar, max_tokens: 200, stream: true, stream_options: { include_usage: true } }));
    assert.equal(s.usage.completion_tokens_details.reasoning_tokens, k);
    // a random model that never closes the block: every token is reasoning (unless it wrote </think>)
    const free = await c.chat.completions.create({ model: 'm', messages: user, seed, max_tokens: 12, logprobs: true });
    const ft = free.choices[0].logprobs.content.map((t) => t.token);
    assert.equal(free.usage.completion_tokens_details.reasoning_tokens, reasoningCount(ft, true));
  }
  // Responses: output_tokens_details
  const rr = await c.responses.create({ model: 'm', input: 'Weather?', seed: 1, grammar, max_output_tokens: 200, store: false });
  const rt = rr.usage.output_tokens_details.reasoning_tokens;
  assert.ok(rt > 0 && rt < rr.usage.output_tokens, JSON.stringify(rr.usage));
  // Qwen3's prompt does not open the block: the model opens it itself
  const cq = new OpenAI({ baseURL: Q + '/v1', apiKey: 'none', maxRetries: 0, timeout: 120000 });
  const qgrammar = 'root ::= [a-z]{0,3} "<think>" [a-z ]{2,12} "</think>" "\\n\\n" "Answer: " [0-9]{1,3}\n';
  for (const seed of [1, 2, 3]) {
    const r = await cq.chat.completions.create({ model: 'm', messages: user, seed, grammar: qgrammar, max_tokens: 200, logprobs: true });
    const m = r.choices[0].message, toks = r.choices[0].logprobs.content.map((t) => t.token);
    assert.match(m.reasoning_content, /^[a-z ]{2,12}$/);
    const want = reasoningCount(toks, false);
    assert.ok(want > 0 && want < toks.length);
    assert.equal(r.usage.completion_tokens_details.reasoning_tokens, want, toks.join('|'));
  }
  // harmony: the analysis channel is reasoning
  const ch = new OpenAI({ baseURL: process.env.SPUD_URL_H + '/v1', apiKey: 'none', maxRetries: 0, timeout: 120000 });
  const hgrammar = 'root ::= "<|channel|>analysis<|message|>" [a-z ]{2,12} "<|end|><|start|>assistant<|channel|>final<|message|>" "Answer: " [0-9]{1,3}\n';
  for (const seed of [1, 2]) {
    const r = await ch.chat.completions.create({ model: 'm', messages: user, seed, grammar: hgrammar, max_tokens: 200, logprobs: true });
    const m = r.choices[0].message, toks = r.choices[0].logprobs.content.map((t) => t.token);
    assert.match(m.reasoning_content, /^[a-z ]{2,12}$/, JSON.stringify(m));
    assert.match(m.content, /^Answer: [0-9]{1,3}$/, JSON.stringify(m));
    const want = reasoningCount(toks, false, '<|channel|>analysis<|message|>', '<|end|>');
    assert.ok(want > 0 && want < toks.length);
    assert.equal(r.usage.completion_tokens_details.reasoning_tokens, want, toks.join('|'));
  }
  // a template without <think>: none
  const plain = await new OpenAI({ baseURL: process.env.SPUD_URL_L + '/v1', apiKey: 'none', maxRetries: 0 })
    .chat.completions.create({ model: 'm', messages: user, seed: 1, grammar, max_tokens: 200 });
  assert.equal(plain.usage.completion_tokens_details.reasoning_tokens, 0);
});

test('a thinking template under response_format / forced tool_choice: it may think first, content still validates', async () => {
  const { newAjv } = await import('../structured/ajv_check.mjs');
  const { readFileSync } = await import('node:fs');
  const ajv = newAjv();
  const schemas = JSON.parse(readFileSync(new URL('../structured/schemas.json', import.meta.url), 'utf8'));
  const c = new OpenAI({ baseURL: R + '/v1', apiKey: 'none', maxRetries: 0, timeout: 300000 });
  const user = [{ role: 'user', content: 'What is the weather in Paris?' }];
  let thought = 0;
  for (const [i, sc] of schemas.slice(0, 24).entries()) {
    const seed = 1 + (i % 3);
    const body = { model: 'm', messages: user, seed, max_tokens: 3000, reasoning_effort: 'low',
      response_format: { type: 'json_schema', json_schema: { name: 's', schema: sc.schema, strict: true } } };
    const r = await c.chat.completions.create(body);
    const m = r.choices[0].message, what = `${sc.name} seed ${seed}: ${JSON.stringify(m).slice(0, 400)}`;
    assert.equal(r.choices[0].finish_reason, 'stop', what);
    const v = ajv.compile(structuredClone(sc.schema));
    assert.ok(v(JSON.parse(m.content)), `${what}: ${ajv.errorsText(v.errors)}`);
    assert.equal(typeof m.reasoning_content, 'string', what);
    assert.ok(!m.reasoning_content.includes('</think>'), what);
    assert.ok(m.reasoning_content.length <= 1024 * 8, what);
    // the token that closes the block at least is reasoning
    assert.ok(r.usage.completion_tokens_details.reasoning_tokens >= 1, what);
    if (m.reasoning_content.length > 0) thought++;
    if (i % 4 === 0) { // streamed: the same split
      let reasoning = '', content = '';
      for await (const ch of await c.chat.completions.create({ ...body, stream: true })) {
        reasoning += ch.choices[0]?.delta?.reasoning_content ?? '';
        content += ch.choices[0]?.delta?.content ?? '';
      }
      assert.equal(reasoning, m.reasoning_content, what);
      assert.equal(content, m.content, what);
    }
  }
  assert.ok(thought > 12, `${thought} of 24 answers thought first`);
  // effort none: no thought, straight to the answer
  const sc = { type: 'object', properties: { a: { type: 'integer' } }, required: ['a'] };
  const none = await c.chat.completions.create({ model: 'm', messages: user, seed: 1, reasoning_effort: 'none',
    response_format: { type: 'json_schema', json_schema: { name: 's', schema: sc, strict: true } } });
  assert.equal(none.choices[0].message.reasoning_content ?? '', '');
  assert.equal(typeof JSON.parse(none.choices[0].message.content).a, 'number');
  // a forced call: thought, then a valid call
  const tools = [{ type: 'function', function: { name: 'get_weather', strict: true, parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 20 } }, required: ['city'], additionalProperties: false } } }];
  const t = await c.chat.completions.create({ model: 'm', messages: user, seed: 2, tools, tool_choice: 'required', reasoning_effort: 'low', max_tokens: 3000 });
  assert.equal(t.choices[0].finish_reason, 'tool_calls', JSON.stringify(t.choices[0].message));
  assert.equal(t.choices[0].message.tool_calls[0].function.name, 'get_weather');
  assert.equal(typeof JSON.parse(t.choices[0].message.tool_calls[0].function.arguments).city, 'string');
  assert.equal(typeof t.choices[0].message.reasoning_content, 'string');
  // Responses: text.format with reasoning.effort
  const rr = await c.responses.create({ model: 'm', input: 'Weather?', seed: 1, max_output_tokens: 3000, store: false,
    reasoning: { effort: 'low' }, text: { format: { type: 'json_schema', name: 's', schema: sc, strict: true } } });
  assert.equal(rr.status, 'completed');
  assert.equal(typeof JSON.parse(rr.output_text).a, 'number');
  assert.equal(rr.reasoning.effort, 'low');
  assertErrorShape(assert, await raw(R, '/v1/chat/completions', { body: { messages: user, reasoning_effort: 'lots' } }), 400, 'reasoning_effort');
  // Qwen3 (the prompt does not open a block): the model may open one before the answer, or answer at once
  const cq = new OpenAI({ baseURL: Q + '/v1', apiKey: 'none', maxRetries: 0, timeout: 300000 });
  let opened = 0, direct = 0;
  for (const [i, sc] of schemas.slice(0, 16).entries()) {
    const body = { model: 'm', messages: user, seed: 5 + i, max_tokens: 3000, reasoning_effort: 'low',
      response_format: { type: 'json_schema', json_schema: { name: 's', schema: sc.schema, strict: true } } };
    const r = await cq.chat.completions.create(body);
    const m = r.choices[0].message, what = `qwen3 ${sc.name}: ${JSON.stringify(m).slice(0, 400)}`;
    assert.equal(r.choices[0].finish_reason, 'stop', what);
    const v = ajv.compile(structuredClone(sc.schema));
    assert.ok(v(JSON.parse(m.content)), `${what}: ${ajv.errorsText(v.errors)}`);
    if (m.reasoning_content !== undefined && r.usage.completion_tokens_details.reasoning_tokens > 0) opened++;
    else direct++;
  }
  console.log(`qwen3 json_schema: ${opened} thought first, ${direct} answered at once`);
  assert.ok(opened > 0, 'no answer thought first');
  const qn = await cq.chat.completions.create({ model: 'm', messages: user, seed: 1, reasoning_effort: 'none',
    response_format: { type: 'json_schema', json_schema: { name: 's', schema: sc, strict: true } } });
  assert.equal(qn.usage.completion_tokens_details.reasoning_tokens, 0);
  assert.equal(typeof JSON.parse(qn.choices[0].message.content).a, 'number');
  assertErrorShape(assert, await raw(R, '/v1/responses', { body: { input: 'x', reasoning: { effort: 3 } } }), 400, 'reasoning.effort');
  assertErrorShape(assert, await raw(R, '/v1/responses', { body: { input: 'x', reasoning: 'low' } }), 400, 'reasoning');
});
