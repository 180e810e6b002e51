// Structured output and tools through `spud serve`, with the official openai client (v6) and ajv.
// Server S: the tiny random-weight model of server A (Qwen2.5's template: Hermes <tool_call> syntax),
// --ctx-size 4096, no keys. Its unconstrained output is noise, so every valid answer is the grammar's doing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import OpenAI from 'openai';
import { newAjv } from '../structured/ajv_check.mjs';
import { raw, assertErrorShape } from './common.mjs';

const S = process.env.SPUD_URL_S;
const c = new OpenAI({ baseURL: S + '/v1', apiKey: 'none', maxRetries: 0, timeout: 300000 });
const user = [{ role: 'user', content: 'Answer in JSON, please.' }];
const schemas = JSON.parse(readFileSync(new URL('../structured/schemas.json', import.meta.url), 'utf8'));
const toolsets = JSON.parse(readFileSync(new URL('../structured/tools.json', import.meta.url), 'utf8'));
const ajv = newAjv();
const compiled = new Map();
function validate(schema, value) {
  const key = JSON.stringify(schema);
  if (!compiled.has(key)) compiled.set(key, ajv.compile(typeof schema === 'boolean' ? schema : structuredClone(schema)));
  const v = compiled.get(key);
  return v(value) ? null : ajv.errorsText(v.errors);
}
const short = (s) => JSON.stringify(s && s.length > 200 ? s.slice(0, 200) + '...' : s);

async function pool(items, n, fn) {
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) await fn(items[next++]);
  }));
}

async function streamText(body) {
  const s = await c.chat.completions.create({ ...body, stream: true });
  let text = '', finish;
  for await (const ch of s) {
    text += ch.choices[0]?.delta?.content ?? '';
    if (ch.choices[0]?.finish_reason) finish = ch.choices[0].finish_reason;
  }
  return { text, finish };
}

test('json_schema: every schema of the suite x 2 seeds validates under ajv, streamed and not', async () => {
  const jobs = [];
  for (const [i, sc] of schemas.entries()) for (const seed of [1, 2]) jobs.push({ sc, seed, stream: (i + seed) % 2 === 0 });
  let ok = 0;
  const fails = [];
  await pool(jobs, 4, async ({ sc, seed, stream }) => {
    const body = {
      model: 'm', messages: user, seed, max_tokens: 3800,
      response_format: { type: 'json_schema', json_schema: { name: 's', schema: sc.schema, strict: true } },
    };
    let text, finish;
    if (stream) ({ text, finish } = await streamText(body));
    else {
      const r = await c.chat.completions.create(body);
      text = r.choices[0].message.content;
      finish = r.choices[0].finish_reason;
    }
    const what = `${sc.name} seed ${seed}${stream ? ' stream' : ''}`;
    if (finish !== 'stop') return fails.push(`${what}: finish_reason ${finish}: ${short(text)}`);
    let v;
    try { v = JSON.parse(text); } catch (e) { return fails.push(`${what}: ${e.message}: ${short(text)}`); }
    const err = validate(sc.schema, v);
    if (err) return fails.push(`${what}: ${err}: ${short(text)}`);
    ok++;
  });
  console.log(`json_schema: ${ok}/${jobs.length} outputs valid under ajv`);
  assert.deepEqual(fails, []);
  assert.ok(schemas.length >= 50);
});

test('json_schema: the same seed gives the same text streamed and not; max_tokens cuts with length', async () => {
  const schema = { type: 'object', properties: { a: { type: 'string' }, b: { type: 'array', items: { type: 'integer' } } },
    required: ['a', 'b'], additionalProperties: false };
  const body = { model: 'm', messages: user, seed: 9, response_format: { type: 'json_schema', json_schema: { name: 'x', schema, strict: true } } };
  const r = await c.chat.completions.create(body);
  const s = await streamText(body);
  assert.equal(s.text, r.choices[0].message.content);
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(validate(schema, JSON.parse(s.text)), null);
  const cut = await c.chat.completions.create({ ...body, max_tokens: 3 });
  assert.equal(cut.choices[0].finish_reason, 'length');
  assert.equal(cut.usage.completion_tokens, 3);
  assert.ok(cut.choices[0].message.content.startsWith('{'));
  // n choices: each its own grammar state, each valid
  const n = await c.chat.completions.create({ ...body, n: 3, seed: 4 });
  assert.equal(n.choices.length, 3);
  for (const ch of n.choices) assert.equal(validate(schema, JSON.parse(ch.message.content)), null, ch.message.content);
});

test('json_object: any JSON object, parsed, streamed and not', async () => {
  for (const seed of [1, 2, 3, 4, 5, 6]) {
    const body = { model: 'm', messages: user, seed, max_tokens: 3800, response_format: { type: 'json_object' } };
    const text = seed % 2 ? (await c.chat.completions.create(body)).choices[0].message.content : (await streamText(body)).text;
    const v = JSON.parse(text);
    assert.equal(typeof v, 'object');
    assert.ok(v !== null && !Array.isArray(v), text);
  }
  // {"type": "text"} is no constraint: the same text as no response_format
  const plain = { model: 'm', messages: user, seed: 3, max_tokens: 12, logit_bias: { 509: -100, 510: -100, 511: -100 } };
  const a = await c.chat.completions.create(plain);
  const b = await c.chat.completions.create({ ...plain, response_format: { type: 'text' } });
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
});

test('grammar: a GBNF string constrains the output (llama-server extension)', async () => {
  const grammar = 'root ::= "<" item ("," item){2,4} ">"\nitem ::= [a-z]{1,3} | [0-9]+\n';
  for (const seed of [1, 2, 3]) {
    const r = await c.chat.completions.create({ model: 'm', messages: user, seed, max_tokens: 500, grammar });
    assert.match(r.choices[0].message.content, /^<([a-z]{1,3}|[0-9]+)(,([a-z]{1,3}|[0-9]+)){2,4}>$/);
    assert.equal(r.choices[0].finish_reason, 'stop');
  }
});

test('logprobs under a grammar are those of the constrained distribution', async () => {
  const r = await c.chat.completions.create({ model: 'm', messages: user, seed: 1, grammar: 'root ::= [0-9]{6}\n',
    logprobs: true, top_logprobs: 5 });
  const lp = r.choices[0].logprobs.content;
  assert.equal(lp.map((x) => x.token).join(''), r.choices[0].message.content);
  for (const x of lp) {
    assert.ok(x.top_logprobs.length > 0);
    for (const t of x.top_logprobs) assert.match(t.token, /^[0-9]+$/, 'a refused token among the alternatives');
    const mass = x.top_logprobs.reduce((a, t) => a + Math.exp(t.logprob), 0);
    assert.ok(mass <= 1 + 1e-4, String(mass));
    assert.ok(x.logprob <= 0 && x.logprob > -50);
  }
});

test('completions: grammar and response_format constrain /v1/completions too', async () => {
  for (const seed of [1, 2]) {
    const r = await c.completions.create({ model: 'm', prompt: 'Numbers:', seed, max_tokens: 100, grammar: 'root ::= [0-9]{3} ("-" [0-9]{3}){2}\n' });
    assert.match(r.choices[0].text, /^[0-9]{3}(-[0-9]{3}){2}$/);
    assert.equal(r.choices[0].finish_reason, 'stop');
    const schema = { type: 'array', items: { type: 'boolean' }, minItems: 2, maxItems: 4 };
    const j = await c.completions.create({ model: 'm', prompt: 'JSON:', seed, max_tokens: 200, stream: true,
      response_format: { type: 'json_schema', json_schema: { name: 'x', schema, strict: true } } });
    let text = '';
    for await (const ch of j) text += ch.choices[0]?.text ?? '';
    assert.equal(validate(schema, JSON.parse(text)), null, text);
  }
  const bad = await raw(S, '/v1/completions', { body: { model: 'm', prompt: 'x', grammar: 'root ::= [0-9' } });
  assertErrorShape(assert, bad, 400, 'grammar');
});

test('responses: text.format json_schema validates, streamed and not', async () => {
  for (const [i, sc] of schemas.slice(0, 12).entries()) {
    const body = { model: 'm', input: 'JSON please', max_output_tokens: 3800, seed: i, store: false,
      text: { format: { type: 'json_schema', name: 'x', schema: sc.schema, strict: true } } };
    let text;
    if (i % 2) {
      const r = await c.responses.create(body);
      assert.equal(r.status, 'completed');
      assert.deepEqual(r.text.format.schema, sc.schema);
      text = r.output_text;
    } else {
      const s = await c.responses.create({ ...body, stream: true });
      text = '';
      let done;
      for await (const ev of s) {
        if (ev.type === 'response.output_text.delta') text += ev.delta;
        if (ev.type === 'response.completed') done = ev.response;
      }
      assert.ok(done, sc.name);
      assert.equal(done.output_text ?? done.output[0].content[0].text, text);
    }
    assert.equal(validate(sc.schema, JSON.parse(text)), null, `${sc.name}: ${text}`);
  }
  const r = await c.responses.create({ model: 'm', input: 'x', seed: 1, max_output_tokens: 2000, text: { format: { type: 'json_object' } } });
  assert.equal(typeof JSON.parse(r.output_text), 'object');
});

// ---- bad input

test('errors: invalid schemas, strict-mode keywords, malformed grammars, bad tools are 400s naming the field', async () => {
  const t1 = [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { x: { type: 'integer' } } } } }];
  const cases = [
    [{ response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'objekt' } } } }, 'response_format.json_schema.schema', /objekt/],
    [{ response_format: { type: 'json_schema', json_schema: { name: 'x', strict: true, schema: { type: 'number', multipleOf: 3 } } } }, 'response_format.json_schema.schema', /multipleOf/],
    [{ response_format: { type: 'json_schema', json_schema: { name: 'x', strict: true, schema: { type: 'object', properties: { a: { not: {} } } } } } }, 'response_format.json_schema.schema', /not/],
    [{ response_format: { type: 'json_schema', json_schema: { name: 'x' } } }, 'response_format.json_schema.schema', /required/],
    [{ response_format: { type: 'xml' } }, 'response_format.type', /xml/],
    [{ response_format: 'json' }, 'response_format', /object/],
    [{ grammar: 'root ::= ( "a"' }, 'grammar', /line 1/],
    [{ grammar: 'start ::= "a"' }, 'grammar', /root/],
    [{ grammar: 'root ::= <no-such-token>' }, 'grammar', /no-such-token/],
    [{ grammar: 7 }, 'grammar', /string/],
    [{ grammar: 'root ::= "a"', response_format: { type: 'json_object' } }, 'grammar', /both/],
    [{ tools: [{ type: 'function', function: { parameters: {} } }] }, 'tools[0].function.name', /name/],
    [{ tools: [{ type: 'function', function: { name: 'bad name!' } }] }, 'tools[0].function.name', /bad name/],
    [{ tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'strang' } } }] }, 'tools[0].function.parameters', /strang/],
    [{ tools: [...t1, { type: 'function', function: { name: 'g', strict: true, parameters: { type: 'object', properties: { y: { type: 'array', uniqueItems: true } } } } }] }, 'tools[1].function.parameters', /uniqueItems/],
    [{ tools: [...t1, ...t1] }, 'tools[1].function.name', /two tools/],
    [{ tools: [{ type: 'retrieval' }] }, 'tools[0].type', /function/],
    [{ tools: t1, tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice', /nope/],
    [{ tools: t1, tool_choice: 'sometimes' }, 'tool_choice', /sometimes/],
    [{ tool_choice: 'required' }, 'tool_choice', /tools/],
    [{ tools: t1, tool_choice: 'required', response_format: { type: 'json_object' } }, 'tool_choice', /response_format/],
  ];
  for (const [extra, param, msg] of cases) {
    const r = await raw(S, '/v1/chat/completions', { body: { model: 'm', messages: user, max_tokens: 4, ...extra } });
    assertErrorShape(assert, r, 400, param);
    assert.match(r.json.error.message, msg, JSON.stringify(extra));
  }
  // the Responses API names its own fields
  const rcases = [
    [{ text: { format: { type: 'json_schema', name: 'x', strict: true, schema: { type: 'string', multipleOf: 2 } } } }, 'text.format.schema'],
    [{ tools: [{ type: 'function', parameters: {} }] }, 'tools[0].name'],
    [{ tools: [{ type: 'function', name: 'f' }], tool_choice: { type: 'function', name: 'g' } }, 'tool_choice'],
  ];
  for (const [extra, param] of rcases) {
    const r = await raw(S, '/v1/responses', { body: { model: 'm', input: 'x', ...extra } });
    assertErrorShape(assert, r, 400, param);
  }
  // the openai client surfaces them as BadRequestError
  await assert.rejects(c.chat.completions.create({ model: 'm', messages: user, grammar: '(' }), (e) => e instanceof OpenAI.BadRequestError && e.param === 'grammar');
});

test('garbage in response_format, grammar, tools and tool_choice: a 400 or an answer, never a crash', async () => {
  let seed = 12345;
  const rnd = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return (seed >>> 12) % n; };
  const atoms = [null, true, 0, -1, 1e308, '', 'x', 'auto', 'none', 'required', 'function', 'json_schema', 'json_object',
    'text', 'object', 'string', 'root ::= "a"', 'root ::= (', '<tool_call>', '\u0000', '\ud83d\ude00', [], {}];
  const keys = ['type', 'json_schema', 'schema', 'name', 'strict', 'function', 'parameters', 'properties', 'items',
    'required', 'enum', 'const', '$ref', 'anyOf', 'pattern', 'minLength', 'maxItems', 'format', 'additionalProperties'];
  const gen = (d) => {
    const k = rnd(d > 3 ? 1 : 3);
    if (k === 0) return structuredClone(atoms[rnd(atoms.length)]);
    if (k === 1) return Array.from({ length: rnd(3) }, () => gen(d + 1));
    return Object.fromEntries(Array.from({ length: rnd(4) }, () => [keys[rnd(keys.length)], gen(d + 1)]));
  };
  const fields = ['response_format', 'grammar', 'tools', 'tool_choice', 'parallel_tool_calls'];
  const counts = {};
  for (let i = 0; i < 300; i++) {
    const body = { model: 'm', messages: user, max_tokens: 8, seed: i };
    for (const f of fields) if (rnd(2)) body[f] = gen(0);
    const route = rnd(3);
    const path = ['/v1/chat/completions', '/v1/responses', '/v1/completions'][route];
    if (route === 1) { body.input = 'x'; delete body.messages; if (rnd(2)) body.text = { format: body.response_format }; }
    if (route === 2) { body.prompt = 'x'; delete body.messages; }
    const r = await raw(S, path, { body });
    counts[r.status] = (counts[r.status] ?? 0) + 1;
    assert.ok(r.status === 200 || r.status === 400, `${r.status} for ${JSON.stringify(body)}: ${r.text.slice(0, 300)}`);
    if (r.status === 400) assertErrorShape(assert, r, 400);
  }
  console.log('garbage requests by status:', JSON.stringify(counts));
  assert.equal((await raw(S, '/v1/chat/completions', { body: { model: 'm', messages: user, max_tokens: 2 } })).status, 200);
});
