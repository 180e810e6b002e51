// The OpenAI API of `spud serve`, through the official openai client (v6) and raw HTTP.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import {
  A, B, KEY, FILE_KEY, NO_SPECIAL, client, metrics, waitFor, chatText, collectChat, raw, assertErrorShape, sleep,
} from './common.mjs';

const c = client();
const hello = [{ role: 'user', content: 'Hello there, how are you?' }];
const greedy = { model: 'm', messages: hello, temperature: 0, max_tokens: 24 };

test('health and models', async () => {
  const h = await fetch(A + '/health');
  assert.equal(h.status, 200);
  assert.deepEqual(await h.json(), { status: 'ok' });
  const models = await c.models.list();
  assert.equal(models.data.length, 1);
  assert.equal(models.data[0].id, 'tiny.gguf');
  assert.equal(models.data[0].object, 'model');
  assert.equal((await c.models.retrieve('tiny.gguf')).id, 'tiny.gguf');
  await assert.rejects(c.models.retrieve('gpt-9'), (e) => e instanceof OpenAI.NotFoundError);
  // the routes answer without the /v1 prefix too
  const r = await raw(A, '/chat/completions', { body: { ...greedy, max_tokens: 1 } });
  assert.equal(r.status, 200, r.text);
  assert.equal((await raw(A, '/models', { method: 'GET' })).json.data[0].id, 'tiny.gguf');
});

test('chat: non-streaming shape, usage, finish_reason length', async () => {
  const r = await c.chat.completions.create({ ...greedy, max_tokens: 8, logit_bias: NO_SPECIAL });
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.model, 'tiny.gguf');
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].index, 0);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 8);
  assert.ok(r.usage.prompt_tokens > 5);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 8);
  assert.equal(typeof r.usage.prompt_tokens_details.cached_tokens, 'number');
  // max_completion_tokens is the newer name of max_tokens
  const r2 = await c.chat.completions.create({ ...greedy, max_tokens: undefined, max_completion_tokens: 5, logit_bias: NO_SPECIAL });
  assert.equal(r2.usage.completion_tokens, 5);
});

test('chat: streaming gives the same text, role first, usage last with include_usage', async () => {
  const want = await chatText(c, greedy);
  const s = await c.chat.completions.create({ ...greedy, stream: true, stream_options: { include_usage: true } });
  let first = true, last;
  const text = [];
  let usage;
  for await (const ch of s) {
    assert.equal(ch.object, 'chat.completion.chunk');
    if (first) assert.equal(ch.choices[0].delta.role, 'assistant');
    first = false;
    if (ch.usage) {
      usage = ch.usage;
      assert.equal(ch.choices.length, 0);
    } else {
      assert.equal(ch.usage, null);
      text.push(ch.choices[0].delta.content ?? '');
      if (ch.choices[0].finish_reason) last = ch.choices[0].finish_reason;
    }
  }
  assert.equal(text.join(''), want);
  assert.ok(last === 'length' || last === 'stop');
  assert.ok(usage && usage.completion_tokens > 0 && usage.total_tokens === usage.prompt_tokens + usage.completion_tokens);
  // without include_usage there is no usage chunk
  const s2 = await collectChat(await c.chat.completions.create({ ...greedy, stream: true }));
  assert.equal(s2.usage, undefined);
  assert.equal(s2.text[0], want);
});

test('chat: a repeated prompt reuses its KV (cached_tokens)', async () => {
  const body = { ...greedy, messages: [{ role: 'user', content: 'Tell me about caching of prompt prefixes.' }], max_tokens: 2 };
  await c.chat.completions.create(body);
  const r = await c.chat.completions.create(body);
  assert.equal(r.usage.prompt_tokens_details.cached_tokens, r.usage.prompt_tokens - 1);
  const s = await collectChat(await c.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } }));
  assert.equal(s.usage.prompt_tokens_details.cached_tokens, r.usage.prompt_tokens - 1);
});

// A stop string made of the end of one token and the start of the next.
async function splitStop() {
  const r = await c.chat.completions.create({ ...greedy, max_tokens: 60, logprobs: true, logit_bias: NO_SPECIAL });
  const toks = r.choices[0].logprobs.content.map((t) => Buffer.from(t.bytes));
  const text = r.choices[0].message.content;
  for (let i = 3; i + 1 < toks.length; i++) {
    const a = toks[i], b = toks[i + 1];
    const ascii = (x) => x.length >= 2 && [...x].every((v) => v >= 0x20 && v < 0x7f);
    if (!ascii(a) || !ascii(b)) continue;
    const stop = a.subarray(a.length - 2).toString() + b.subarray(0, 2).toString();
    const at = text.indexOf(stop);
    if (at > 0) return { stop, want: text.slice(0, at), text };
  }
  throw new Error('no two ASCII tokens in a row: ' + JSON.stringify(text));
}

test('chat: stop sequences, split across tokens, never leak (stream and not)', async () => {
  const { stop, want, text } = await splitStop();
  for (const s of [stop, [stop], ['\u0001never', stop]]) {
    const r = await c.chat.completions.create({ ...greedy, max_tokens: 60, stop: s, logit_bias: NO_SPECIAL });
    assert.equal(r.choices[0].message.content, want, `stop ${JSON.stringify(s)} in ${JSON.stringify(text)}`);
    assert.equal(r.choices[0].finish_reason, 'stop');
    const st = await collectChat(await c.chat.completions.create({ ...greedy, max_tokens: 60, stop: s, stream: true, logit_bias: NO_SPECIAL }));
    assert.equal(st.text[0], want);
    assert.equal(st.finish[0], 'stop');
  }
  // a stop string that never matches holds nothing back at the end
  const r = await c.chat.completions.create({ ...greedy, max_tokens: 60, stop: ['\u0001\u0002'], logit_bias: NO_SPECIAL });
  assert.equal(r.choices[0].message.content, text);
  assert.equal(r.choices[0].finish_reason, 'length');
});

test('chat: the same seed gives the same text; sampling parameters', async () => {
  const body = { ...greedy, temperature: 1, seed: 1234, max_tokens: 24, logit_bias: NO_SPECIAL };
  const a = await chatText(c, body), b = await chatText(c, body);
  assert.equal(a, b);
  const st = await collectChat(await c.chat.completions.create({ ...body, stream: true }));
  assert.equal(st.text[0], a);
  const other = await chatText(c, { ...body, seed: 4321 });
  assert.notEqual(other, a);
  // top_k 1, min_p 1 and top_p 0 keep only the best token: greedy
  const g = await chatText(c, { ...greedy, logit_bias: NO_SPECIAL });
  assert.equal(await chatText(c, { ...body, top_k: 1 }), g);
  assert.equal(await chatText(c, { ...body, min_p: 1 }), g);
  assert.equal(await chatText(c, { ...body, top_p: 0 }), g);
  // the penalties are accepted (their effect is tested in test_sampler)
  const p = await c.chat.completions.create({ ...body, presence_penalty: 1.5, frequency_penalty: -0.5 });
  assert.equal(p.usage.completion_tokens, 24);
});

test('chat: n choices share one prompt', async () => {
  const body = { ...greedy, temperature: 1, seed: 99, n: 3, max_tokens: 16, logit_bias: NO_SPECIAL };
  const m0 = await metrics();
  const r = await c.chat.completions.create(body);
  const m1 = await metrics();
  assert.equal(m1.spud_prompt_tokens_total - m0.spud_prompt_tokens_total, r.usage.prompt_tokens); // one prefill
  assert.equal(r.choices.length, 3);
  assert.deepEqual(r.choices.map((x) => x.index), [0, 1, 2]);
  assert.equal(r.usage.completion_tokens, 48);
  const texts = r.choices.map((x) => x.message.content);
  assert.equal(new Set(texts).size, 3, JSON.stringify(texts));
  // choice i samples with seed + i, so choice 1 of seed 99 is choice 0 of seed 100
  assert.equal(await chatText(c, { ...body, n: 1, seed: 100 }), texts[1]);
  const s = await collectChat(await c.chat.completions.create({ ...body, stream: true }));
  assert.deepEqual(s.text, texts);
  assert.deepEqual(s.finish, ['length', 'length', 'length']);
});

test('chat: an end-of-generation token ends the choice with finish_reason stop', async () => {
  const r = await c.chat.completions.create({ ...greedy, logit_bias: { 511: 100 } }); // <|im_end|>
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(r.choices[0].message.content, '');
  const s = await collectChat(await c.chat.completions.create({ ...greedy, logit_bias: { 511: 100 }, stream: true }));
  assert.deepEqual(s.finish, ['stop']);
});

test('a long prompt is prefilled in chunks while other streams keep generating', async () => {
  const s1 = await c.chat.completions.create({ ...greedy, max_tokens: 900, logprobs: true, logit_bias: NO_SPECIAL, stream: true });
  const times = [];
  let started;
  const firstTokens = new Promise((r) => (started = r));
  const reading = (async () => {
    for await (const ch of s1) {
      const k = ch.choices[0]?.logprobs?.content?.length ?? 0;
      for (let i = 0; i < k; i++) times.push(performance.now());
      if (times.length >= 3) started();
    }
  })().catch(() => {});
  await firstTokens;
  const prompt = Array.from({ length: 960 }, (_, i) => (i * 37) % 500);
  const t0 = performance.now();
  const r = await c.completions.create({ model: 'm', prompt, max_tokens: 1, temperature: 0 });
  const t1 = performance.now();
  s1.controller.abort();
  await reading;
  assert.equal(r.usage.prompt_tokens, 960);
  const during = times.filter((t) => t > t0 && t < t1).length;
  // 960 prompt tokens are 15 chunks of 64, each run together with the stream's next token
  assert.ok(during >= 8, `the running stream got ${during} tokens during the prefill`);
});

test('chat: logprobs and top_logprobs', async () => {
  const r = await c.chat.completions.create({ ...greedy, max_tokens: 6, logprobs: true, top_logprobs: 3, logit_bias: NO_SPECIAL });
  const lp = r.choices[0].logprobs.content;
  assert.equal(lp.length, 6);
  let bytes = [];
  for (const t of lp) {
    assert.ok(t.logprob <= 0);
    assert.equal(t.top_logprobs.length, 3);
    assert.equal(t.top_logprobs[0].token, t.token); // greedy: the chosen token is the best
    assert.ok(Math.abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6);
    assert.ok(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob);
    assert.ok(t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob);
    bytes = bytes.concat(t.bytes);
  }
  assert.equal(Buffer.from(bytes).toString(), r.choices[0].message.content);
  const s = await c.chat.completions.create({ ...greedy, max_tokens: 6, logprobs: true, stream: true, logit_bias: NO_SPECIAL });
  let n = 0;
  for await (const ch of s) n += ch.choices[0]?.logprobs?.content?.length ?? 0;
  assert.equal(n, 6);
});

test('chat: logit_bias forces and forbids tokens; /tokenize and /detokenize', async () => {
  // the first generated token that is printable ASCII (so /tokenize can name it)
  const r = await c.chat.completions.create({ ...greedy, max_tokens: 40, logprobs: true, logit_bias: NO_SPECIAL });
  const lp = r.choices[0].logprobs.content;
  let at = -1, id, piece;
  for (let i = 0; i < lp.length && id === undefined; i++) {
    if (!lp[i].bytes.every((b) => b >= 0x20 && b < 0x7f)) continue;
    piece = Buffer.from(lp[i].bytes).toString();
    const tok = await raw(A, '/tokenize', { body: { content: piece } });
    assert.equal(tok.status, 200, tok.text);
    if (tok.json.tokens.length === 1 && lp.findIndex((t) => Buffer.from(t.bytes).toString() === piece) === i) {
      id = tok.json.tokens[0];
      at = i;
    }
  }
  assert.ok(id !== undefined, 'no ASCII token in ' + JSON.stringify(r.choices[0].message.content));
  const detok = await raw(A, '/detokenize', { body: { tokens: [id, id] } });
  assert.equal(detok.json.content, piece + piece);
  // forbid it: everything before its first place is the same, then another token comes
  const r2 = await c.chat.completions.create({ ...greedy, max_tokens: at + 1, logprobs: true, logit_bias: { ...NO_SPECIAL, [id]: -100 } });
  const lp2 = r2.choices[0].logprobs.content;
  assert.deepEqual(lp2.slice(0, at).map((t) => t.bytes), lp.slice(0, at).map((t) => t.bytes));
  assert.notDeepEqual(lp2[at].bytes, lp[at].bytes);
  // force another token: it comes out every time
  const other = (id + 7) % 500;
  const r3 = await c.chat.completions.create({ ...greedy, max_tokens: 4, logit_bias: { [other]: 100 } });
  const want = (await raw(A, '/detokenize', { body: { tokens: [other, other, other, other] } })).json.content;
  assert.equal(r3.choices[0].message.content, want);
});

// The prompt Python's jinja2 renders from the model's template (tests/server/gguf_template.py).
function jinja2Prompt(req) {
  return execFileSync(process.env.PYTHON ?? 'python3', [new URL('./gguf_template.py', import.meta.url).pathname, 'render', process.env.SPUD_MODEL_A],
    { input: JSON.stringify(req) }).toString();
}

test('chat: the model\'s template renders every role and tool calls as jinja2 does; no template: ChatML', async () => {
  const messages = [
    { role: 'system', content: 'S' },
    { role: 'developer', content: 'D' },
    { role: 'user', content: [{ type: 'text', text: 'U1' }, { type: 'text', text: 'U2' }] },
    { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: '{"x": 1, "y": "é"}' } }] },
    { role: 'tool', tool_call_id: 'c1', content: 'T' },
    { role: 'assistant', content: 'A' },
    { role: 'user', content: 'Q' },
  ];
  const tools = [{ type: 'function', function: { name: 'f', description: 'Does f.', parameters: { type: 'object', properties: { x: { type: 'integer' } } } } }];
  for (const req of [{ messages }, { messages, tools }, { messages: messages.slice(2, 3), add_generation_prompt: false }, { messages: hello }]) {
    const t = await raw(A, '/apply-template', { body: req });
    assert.equal(t.status, 200, t.text);
    assert.equal(t.json.prompt, jinja2Prompt(req), JSON.stringify(req));
  }
  const r = await c.chat.completions.create({ model: 'm', messages, tools, max_tokens: 2 });
  assert.equal(r.choices.length, 1);
  // server B's model has no template: ChatML, with tools and tool calls written out Hermes-style
  const t = await raw(B, '/apply-template', { body: { messages } });
  assert.equal(
    t.json.prompt,
    '<|im_start|>system\nS<|im_end|>\n<|im_start|>system\nD<|im_end|>\n<|im_start|>user\nU1U2<|im_end|>\n' +
      '<|im_start|>assistant\n\n<tool_call>\n{"name": "f", "arguments": {"x": 1, "y": "é"}}\n</tool_call><|im_end|>\n' +
      '<|im_start|>tool\nT<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n' +
      '<|im_start|>assistant\n',
  );
  // the rendered prompt is tokenized with its special tokens recognised
  const q = [{ role: 'user', content: 'Q' }];
  const one = await c.chat.completions.create({ model: 'm', messages: q, max_tokens: 1 });
  const prompt = (await raw(A, '/apply-template', { body: { messages: q } })).json.prompt;
  const special = (await raw(A, '/tokenize', { body: { content: prompt } })).json.tokens;
  const plain = (await raw(A, '/tokenize', { body: { content: prompt, parse_special: false } })).json.tokens;
  assert.equal(one.usage.prompt_tokens, special.length);
  assert.ok(plain.length > special.length + 10);
});

test('completions: text, stream, echo, token prompts, logprobs', async () => {
  const body = { model: 'm', prompt: 'Once upon a time', max_tokens: 12, temperature: 0, logit_bias: NO_SPECIAL };
  const r = await c.completions.create(body);
  assert.equal(r.object, 'text_completion');
  assert.match(r.id, /^cmpl-/);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 12);
  const text = r.choices[0].text;
  const s = await collectChat(await c.completions.create({ ...body, stream: true, stream_options: { include_usage: true } }));
  assert.equal(s.text[0], text);
  assert.equal(s.usage.completion_tokens, 12);
  const e = await c.completions.create({ ...body, echo: true });
  assert.equal(e.choices[0].text, 'Once upon a time' + text);
  // default max_tokens is 16, as OpenAI's
  const d = await c.completions.create({ model: 'm', prompt: 'Once upon a time', temperature: 0, logit_bias: NO_SPECIAL });
  assert.equal(d.usage.completion_tokens, 16);
  const l = await c.completions.create({ ...body, logprobs: 2 });
  const lp = l.choices[0].logprobs;
  assert.equal(lp.tokens.length, 12);
  assert.equal(lp.token_logprobs.length, 12);
  assert.equal(lp.text_offset.length, 12);
  assert.equal(Object.keys(lp.top_logprobs[0]).length <= 2, true);
  assert.equal(lp.text_offset[0], 0);
  // a prompt of token ids, also nested one level
  const ids = [1, 2, 3, 40, 50];
  const t1 = await c.completions.create({ model: 'm', prompt: ids, max_tokens: 4, temperature: 0 });
  const t2 = await c.completions.create({ model: 'm', prompt: [ids], max_tokens: 4, temperature: 0 });
  assert.equal(t1.usage.prompt_tokens, 5);
  assert.equal(t1.choices[0].text, t2.choices[0].text);
});

test('responses: create, stream, retrieve, previous_response_id, instructions, store', async () => {
  const r1 = await c.responses.create({ model: 'm', input: 'Hello there', max_output_tokens: 10, temperature: 0, logit_bias: NO_SPECIAL });
  assert.match(r1.id, /^resp_/);
  assert.equal(r1.object, 'response');
  assert.equal(r1.status, 'incomplete');
  assert.equal(r1.incomplete_details.reason, 'max_output_tokens');
  assert.equal(r1.output[0].type, 'message');
  assert.equal(r1.output[0].content[0].type, 'output_text');
  assert.equal(r1.output_text, r1.output[0].content[0].text); // the SDK's convenience field
  assert.equal(r1.usage.output_tokens, 10);
  assert.equal(r1.usage.total_tokens, r1.usage.input_tokens + 10);

  // the stream: typed events in order, deltas add up to the final text
  const s = await c.responses.create({ model: 'm', input: 'Hello there', max_output_tokens: 10, temperature: 0, stream: true });
  const types = [];
  let text = '', final, seq = -1;
  for await (const ev of s) {
    types.push(ev.type);
    assert.equal(ev.sequence_number, seq + 1);
    seq = ev.sequence_number;
    if (ev.type === 'response.output_text.delta') text += ev.delta;
    if (ev.type === 'response.completed' || ev.type === 'response.incomplete') final = ev.response;
  }
  const uniq = types.filter((t, i) => t !== types[i - 1]);
  assert.deepEqual(uniq.filter((t) => t !== 'response.output_text.delta').slice(0, 4), [
    'response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added',
  ]);
  assert.deepEqual(uniq.slice(-4), ['response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.incomplete']);
  assert.equal(text, r1.output_text);
  assert.equal(final.output[0].content[0].text, text);

  // stored: retrieve it, and continue the conversation
  const got = await c.responses.retrieve(r1.id);
  assert.equal(got.output[0].content[0].text, r1.output_text);
  const tmp = await c.responses.create({ model: 'm', input: 'Forget me', max_output_tokens: 1 });
  await c.responses.delete(tmp.id);
  await assert.rejects(c.responses.retrieve(tmp.id), (e) => e instanceof OpenAI.NotFoundError);
  await assert.rejects(c.responses.delete(tmp.id), (e) => e instanceof OpenAI.NotFoundError);
  const r2 = await c.responses.create({ model: 'm', input: 'And then?', previous_response_id: r1.id, max_output_tokens: 4, temperature: 0 });
  assert.equal(r2.previous_response_id, r1.id);
  // the second prompt holds the first turn: at least its prompt is reused from the cache
  assert.ok(r2.usage.input_tokens > r1.usage.input_tokens + 4, JSON.stringify([r1.usage, r2.usage]));
  assert.ok(r2.usage.input_tokens_details.cached_tokens >= r1.usage.input_tokens, JSON.stringify(r2.usage));
  const alone = await c.responses.create({ model: 'm', input: 'And then?', max_output_tokens: 1, temperature: 0 });
  assert.ok(r2.usage.input_tokens > alone.usage.input_tokens);
  // instructions add a system message (and are not carried to the next turn)
  const instructions = 'Answer in French, in the voice of a nineteenth-century novelist, and never in English. '.repeat(3);
  const ins = await c.responses.create({ model: 'm', input: 'And then?', instructions, max_output_tokens: 1, store: false });
  assert.ok(ins.usage.input_tokens > alone.usage.input_tokens + 50, JSON.stringify([ins.usage, alone.usage]));
  assert.equal(ins.instructions, instructions);
  // store: false keeps nothing
  await assert.rejects(
    c.responses.create({ model: 'm', input: 'x', previous_response_id: ins.id, max_output_tokens: 1 }),
    (e) => e.status === 400 && e.param === 'previous_response_id',
  );
  // input items: messages with parts, function calls and their output
  const items = await c.responses.create({
    model: 'm', max_output_tokens: 2,
    input: [
      { role: 'user', content: [{ type: 'input_text', text: 'What is the weather?' }] },
      { type: 'function_call', call_id: 'c1', name: 'weather', arguments: '{"city":"Oslo"}' },
      { type: 'function_call_output', call_id: 'c1', output: 'rain' },
      { type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'It rains.' }] },
      { role: 'user', content: 'Thanks' },
    ],
  });
  assert.equal(items.usage.output_tokens, 2);
  // Responses-style function tools render as the chat-style ones do
  const params = { type: 'object', properties: { city: { type: 'string' } } };
  const viaChat = await c.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'Weather?' }], max_tokens: 1,
    tools: [{ type: 'function', function: { name: 'weather', description: 'Get it.', parameters: params } }] });
  const viaResp = await c.responses.create({ model: 'm', input: 'Weather?', max_output_tokens: 1, store: false,
    tools: [{ type: 'function', name: 'weather', description: 'Get it.', parameters: params }] });
  assert.equal(viaResp.usage.input_tokens, viaChat.usage.prompt_tokens);
  assert.ok(viaChat.usage.prompt_tokens > alone.usage.input_tokens + 20);
});

test('eight concurrent streams each get their own text, decoded in shared batches', async () => {
  const prompts = Array.from({ length: 8 }, (_, i) => [{ role: 'user', content: `Request number ${i}: ${'abcdefgh'.slice(0, i + 1)}` }]);
  const body = (m) => ({ model: 'm', messages: m, temperature: 0, max_tokens: 32, logit_bias: NO_SPECIAL });
  const want = [];
  for (const m of prompts) want.push(await chatText(c, body(m)));
  const m0 = await metrics();
  const got = await Promise.all(prompts.map(async (m) => (await collectChat(await c.chat.completions.create({ ...body(m), stream: true }))).text[0]));
  const m1 = await metrics();
  assert.deepEqual(got, want);
  const gen = m1.spud_generated_tokens_total - m0.spud_generated_tokens_total;
  const steps = m1.spud_decode_steps_total - m0.spud_decode_steps_total;
  assert.equal(gen, 8 * 32);
  assert.ok(steps < 0.75 * gen, `${steps} forward passes for ${gen} tokens: not batched`);
});

test('errors: wrong types and ranges are 400s naming the field; unknown fields are ignored', async () => {
  const cases = [
    [{ temperature: 'hot' }, 'temperature'],
    [{ temperature: 2.5 }, 'temperature'],
    [{ top_p: 1.5 }, 'top_p'],
    [{ top_k: -1 }, 'top_k'],
    [{ min_p: 'x' }, 'min_p'],
    [{ max_tokens: 0 }, 'max_tokens'],
    [{ max_completion_tokens: 'many' }, 'max_completion_tokens'],
    [{ n: 9 }, 'n'],
    [{ n: 1.5 }, 'n'],
    [{ seed: 'x' }, 'seed'],
    [{ stop: 5 }, 'stop'],
    [{ stop: ['a', 3] }, 'stop[1]'],
    [{ presence_penalty: 3 }, 'presence_penalty'],
    [{ frequency_penalty: '1' }, 'frequency_penalty'],
    [{ logit_bias: { x: 1 } }, 'logit_bias'],
    [{ logit_bias: { 5: 200 } }, 'logit_bias'],
    [{ logit_bias: [] }, 'logit_bias'],
    [{ logprobs: 'yes' }, 'logprobs'],
    [{ top_logprobs: 21, logprobs: true }, 'top_logprobs'],
    [{ stream: 1 }, 'stream'],
    [{ stream_options: { include_usage: 'y' } }, 'stream_options.include_usage'],
    [{ messages: [] }, 'messages'],
    [{ messages: 'hi' }, 'messages'],
    [{ messages: [{ role: 'wizard', content: 'x' }] }, 'messages[0].role'],
    [{ messages: [{ role: 'user', content: 5 }] }, 'messages[0].content'],
    [{ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, 'messages[0].content[0]'],
    [{ model: 7 }, 'model'],
  ];
  for (const [extra, param] of cases) {
    await assert.rejects(c.chat.completions.create({ ...greedy, ...extra }), (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, `${JSON.stringify(extra)}: ${e}`);
      assert.equal(e.param, param, JSON.stringify(extra) + ': ' + e.message);
      return true;
    });
  }
  const res = await raw(A, '/v1/chat/completions', { body: { ...greedy, temperature: 'hot' } });
  assertErrorShape(assert, res, 400, 'temperature');
  assert.equal(res.json.error.type, 'invalid_request_error');
  const { messages: _m, ...noMessages } = greedy;
  assertErrorShape(assert, await raw(A, '/v1/chat/completions', { body: noMessages }), 400, 'messages');
  assertErrorShape(assert, await raw(A, '/v1/completions', { body: { prompt: 5 } }), 400, 'prompt');
  assertErrorShape(assert, await raw(A, '/v1/completions', { body: { prompt: 'x', logprobs: 6 } }), 400, 'logprobs');
  assertErrorShape(assert, await raw(A, '/v1/responses', { body: { input: 5 } }), 400, 'input');
  assertErrorShape(assert, await raw(A, '/v1/responses', { body: { input: 'x', max_output_tokens: -1 } }), 400, 'max_output_tokens');
  assertErrorShape(assert, await raw(A, '/v1/responses', { body: { input: [{ type: 'telepathy' }] } }), 400, 'input[0].type');
  // bad JSON, non-object bodies, invalid UTF-8
  assertErrorShape(assert, await raw(A, '/v1/chat/completions', { body: '{"messages": [' }), 400);
  assertErrorShape(assert, await raw(A, '/v1/chat/completions', { body: '[1, 2]' }), 400);
  assertErrorShape(assert, await raw(A, '/v1/chat/completions', { body: '{} x' }), 400);
  assertErrorShape(assert, await raw(A, '/v1/chat/completions', { body: Buffer.from('{"messages":"\xff"}', 'latin1') }), 400);
  // unknown fields are ignored
  const r = await c.chat.completions.create({ ...greedy, max_tokens: 2, frobnicate: { deeply: [1, 2] }, user: 'u', store: false, metadata: { a: 'b' } });
  assert.equal(r.usage.completion_tokens <= 2, true);
  // routes and methods
  assertErrorShape(assert, await raw(A, '/v1/nothing', { method: 'GET' }), 404);
  assertErrorShape(assert, await raw(A, '/v1/chat/completions', { method: 'GET' }), 405);
  assertErrorShape(assert, await raw(A, '/v1/responses/resp_nope', { method: 'GET' }), 404);
});

test('errors: a prompt longer than the context is a 400 with both numbers', async () => {
  const long = 'word '.repeat(4000);
  await assert.rejects(c.chat.completions.create({ ...greedy, messages: [{ role: 'user', content: long }] }), (e) => {
    assert.equal(e.status, 400);
    assert.equal(e.code, 'context_length_exceeded');
    const m = /context is (\d+) tokens.* is (\d+) tokens/.exec(e.message);
    assert.ok(m, e.message);
    assert.equal(Number(m[1]), 1024);
    assert.ok(Number(m[2]) > 1024);
    return true;
  });
  const r = await raw(A, '/v1/completions', { body: { prompt: Array(1025).fill(7), max_tokens: 1 } });
  assertErrorShape(assert, r, 400, 'prompt');
  assert.match(r.json.error.message, /1024/);
  assert.match(r.json.error.message, /1025/);
});

test('errors: body over --max-body is a 413 (with and without Content-Length)', async () => {
  const big = JSON.stringify({ ...greedy, pad: 'x'.repeat(300000) });
  assertErrorShape(assert, await raw(A, '/v1/chat/completions', { body: big }), 413);
  const stream = new ReadableStream({
    start(ctl) {
      for (let i = 0; i < 30; i++) ctl.enqueue(new TextEncoder().encode(i ? 'x'.repeat(10000) : '{"pad":"'));
      ctl.close();
    },
  });
  assertErrorShape(assert, await raw(A, '/v1/chat/completions', { body: stream }), 413);
  // the server still answers
  assert.equal((await c.chat.completions.create({ ...greedy, max_tokens: 1 })).choices.length, 1);
});

test('errors: API keys (missing, wrong, from the file), 401 in OpenAI shape', async () => {
  const missing = await raw(A, '/v1/chat/completions', { body: greedy, key: null });
  assertErrorShape(assert, missing, 401);
  assert.equal(missing.json.error.code, 'invalid_api_key');
  assertErrorShape(assert, await raw(A, '/v1/models', { method: 'GET', key: KEY + 'x' }), 401);
  assertErrorShape(assert, await raw(A, '/v1/models', { method: 'GET', key: KEY.slice(0, -1) }), 401);
  assertErrorShape(assert, await raw(A, '/metrics', { method: 'GET', key: 'nope' }), 401);
  await assert.rejects(client(A, { apiKey: 'sk-wrong' }).models.list(), (e) => e instanceof OpenAI.AuthenticationError);
  const fromFile = await client(A, { apiKey: FILE_KEY }).models.list();
  assert.equal(fromFile.data.length, 1);
  assert.equal((await fetch(A + '/health')).status, 200); // health needs no key
});

test('a client that disconnects mid-stream frees its slot; a full queue is a 429 with Retry-After', async () => {
  const cb = client(B);
  const long = { model: 'm', messages: hello, max_tokens: 3000, temperature: 0, logit_bias: NO_SPECIAL };
  const m0 = await metrics(B);
  // A holds the only slot
  const sa = await cb.chat.completions.create({ ...long, stream: true });
  const ia = sa[Symbol.asyncIterator]();
  let got = 0;
  while (got < 3) {
    const { value } = await ia.next();
    if (value.choices[0]?.delta?.content) got++;
  }
  // B waits in the queue (max 1)
  const sb = await cb.chat.completions.create({ ...long, stream: true });
  const ib = sb[Symbol.asyncIterator]();
  const bFirst = ib.next();
  await waitFor('queue depth 1', async () => (await metrics(B)).spud_queue_depth === 1);
  // C: queue full
  const r = await raw(B, '/v1/chat/completions', { body: long });
  assertErrorShape(assert, r, 429);
  assert.equal(r.json.error.code, 'rate_limit_exceeded');
  assert.ok(Number(r.headers.get('retry-after')) >= 1);
  await assert.rejects(cb.chat.completions.create(long), (e) => e instanceof OpenAI.RateLimitError);
  // A leaves mid-stream: its slot goes to B at once
  sa.controller.abort();
  const t0 = Date.now();
  const { value: bv } = await bFirst;
  assert.ok(bv.choices[0].delta.role === 'assistant');
  assert.ok(Date.now() - t0 < 2000);
  // B leaves too: nothing runs, and A stopped far short of its 3000 tokens
  sb.controller.abort();
  const m1 = await waitFor('idle', async () => {
    const m = await metrics(B);
    return m.spud_active_sequences === 0 && m.spud_queue_depth === 0 ? m : null;
  });
  assert.ok(m1.spud_generated_tokens_total - m0.spud_generated_tokens_total < 3000, JSON.stringify(m1));
  assert.equal(m1.spud_requests_cancelled_total - m0.spud_requests_cancelled_total, 2);
  // a request that leaves while queued is dropped too
  const sc = await cb.chat.completions.create({ ...long, stream: true });
  const ic = sc[Symbol.asyncIterator]();
  await ic.next();
  const ctl = new AbortController();
  const queued = fetch(B + '/v1/chat/completions', { method: 'POST', body: JSON.stringify({ ...long, stream: true }), signal: ctl.signal });
  await waitFor('queued', async () => (await metrics(B)).spud_queue_depth === 1);
  ctl.abort();
  await queued.catch(() => {});
  sc.controller.abort();
  await waitFor('idle again', async () => {
    const m = await metrics(B);
    return m.spud_active_sequences === 0 && m.spud_queue_depth === 0;
  });
  // and the server still answers
  const ok = await cb.chat.completions.create({ ...long, max_tokens: 3 });
  assert.equal(ok.usage.completion_tokens, 3);
  // a non-streaming client that leaves is cancelled as well
  const ctl2 = new AbortController();
  const ns = fetch(B + '/v1/chat/completions', { method: 'POST', body: JSON.stringify(long), signal: ctl2.signal });
  await waitFor('running', async () => (await metrics(B)).spud_active_sequences === 1);
  ctl2.abort();
  await ns.catch(() => {});
  await waitFor('idle after non-streaming abort', async () => (await metrics(B)).spud_active_sequences === 0);
});

test('stored responses are bounded by --store-bytes (least recently used out first)', async () => {
  const cb = client(B);
  const ids = [];
  for (let i = 0; i < 12; i++)
    ids.push((await cb.responses.create({ model: 'm', input: `Turn ${i} `.repeat(20), max_output_tokens: 1 })).id);
  // the oldest went first; the newest are kept
  await assert.rejects(cb.responses.retrieve(ids[0]), (e) => e instanceof OpenAI.NotFoundError);
  assert.equal((await cb.responses.retrieve(ids[11])).id, ids[11]);
  await assert.rejects(cb.responses.create({ model: 'm', input: 'x', previous_response_id: ids[0], max_output_tokens: 1 }),
    (e) => e.status === 400 && e.param === 'previous_response_id');
});

// Send bytes on a raw connection; resolve with what came back when the server closes it (or after ms).
function rawSocket(base, bytes, ms = 2000) {
  const { hostname, port } = new URL(base);
  return new Promise((resolve) => {
    const sock = net.connect(Number(port), hostname, () => sock.write(bytes));
    let got = '';
    sock.on('data', (d) => (got += d));
    const done = () => resolve(got);
    sock.on('close', done);
    sock.on('error', done);
    setTimeout(() => {
      sock.destroy();
      done();
    }, ms);
  });
}

test('garbage on the socket is answered or dropped; the server keeps serving', async () => {
  const junk = [
    Buffer.from([0, 1, 2, 255, 254, 13, 10, 13, 10]),
    'GET / HTTP/9.9\r\n\r\n',
    'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n',
    'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{"messa',
    'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
    'GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ' + 'a'.repeat(200000) + '\r\n\r\n',
    'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ' + KEY + '\r\nContent-Length: 9\r\n\r\n{"n":[[[[',
  ];
  for (const j of junk) await rawSocket(A, j, 300);
  // a request that is cut off mid-body, then the connection closes
  await rawSocket(A, 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"prompt": "a', 100);
  const r = await c.chat.completions.create({ ...greedy, max_tokens: 2 });
  assert.equal(r.choices.length, 1);
  const h = await rawSocket(A, 'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.match(h, /^HTTP\/1\.1 200/);
});

test('metrics: Prometheus text with the documented series', async () => {
  const r = await raw(A, '/metrics', { method: 'GET' });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /text\/plain/);
  const m = await metrics();
  for (const k of ['spud_prompt_tokens_total', 'spud_generated_tokens_total', 'spud_prompt_cached_tokens_total', 'spud_queue_depth',
    'spud_active_sequences', 'spud_kv_cache_tokens', 'spud_kv_cache_capacity_tokens', 'spud_kv_cache_usage_ratio',
    'spud_time_to_first_token_seconds_count', 'spud_generation_tokens_per_second_count', 'spud_time_to_first_token_seconds_bucket{le="+Inf"}'])
    assert.ok(k in m, k);
  assert.ok(m['spud_requests_total{route="/v1/chat/completions",status="200"}'] > 10);
  assert.ok(m['spud_requests_total{route="/v1/chat/completions",status="400"}'] > 10);
  assert.ok(m['spud_requests_total{route="/v1/chat/completions",status="413"}'] >= 2);
  assert.ok(m['spud_requests_total{route="/v1/models",status="401"}'] >= 2);
  assert.equal(m.spud_kv_cache_capacity_tokens, 8 * 1024);
  assert.equal(m.spud_time_to_first_token_seconds_count, m['spud_time_to_first_token_seconds_bucket{le="+Inf"}']);
  void sleep;
});
