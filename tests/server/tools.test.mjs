// Tools through `spud serve` (server S: the tiny random-weight model with Qwen2.5's template, whose call
// syntax is Hermes <tool_call> JSON), with the official openai client (v6) and ajv. Forced calls must
// always name a declared function with arguments valid under its schema; streamed calls, reassembled by
// the client, must equal the non-streamed ones; multi-step conversations must render as jinja2 renders them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import OpenAI from 'openai';
import { newAjv } from '../structured/ajv_check.mjs';
import { raw } from './common.mjs';

const S = process.env.SPUD_URL_S;
const c = new OpenAI({ baseURL: S + '/v1', apiKey: 'none', maxRetries: 0, timeout: 300000 });
const user = [{ role: 'user', content: 'What is the weather in Paris?' }];
const toolsets = JSON.parse(readFileSync(new URL('../structured/tools.json', import.meta.url), 'utf8'));
const ajv = newAjv();
const fnOf = (t) => t.function ?? t;

function checkCalls(tools, calls, what, only) {
  assert.ok(Array.isArray(calls) && calls.length > 0, `${what}: no tool_calls`);
  for (const call of calls) {
    assert.match(call.id, /^call_/, what);
    assert.equal(call.type, 'function', what);
    const fn = tools.map(fnOf).find((f) => f.name === call.function.name);
    assert.ok(fn, `${what}: call to undeclared function ${call.function.name}`);
    if (only) assert.equal(call.function.name, only, what);
    const args = JSON.parse(call.function.arguments);
    const schema = fn.parameters ?? { type: 'object' };
    const v = ajv.compile(structuredClone(schema));
    assert.ok(v(args), `${what}: ${ajv.errorsText(v.errors)}: ${call.function.arguments}`);
  }
}

test('tool_choice required / named: always a valid call to a declared function (ajv), streamed and not', async () => {
  let n = 0;
  for (const ts of toolsets) {
    const names = ts.tools.map((t) => fnOf(t).name);
    const choices = ['required', ...names.map((name) => ({ type: 'function', function: { name } }))];
    for (const tool_choice of choices)
      for (const seed of [1, 2, 3]) {
        for (const parallel_tool_calls of [true, false]) {
          const body = { model: 'm', messages: user, tools: ts.tools, tool_choice, seed, max_tokens: 3000, parallel_tool_calls };
          const what = `${ts.name} ${JSON.stringify(tool_choice)} seed ${seed} parallel ${parallel_tool_calls}`;
          const r = await c.chat.completions.create(body);
          const ch = r.choices[0];
          assert.equal(ch.finish_reason, 'tool_calls', what);
          assert.equal(ch.message.content, null, what);
          checkCalls(ts.tools, ch.message.tool_calls, what, tool_choice.function?.name);
          if (!parallel_tool_calls) assert.equal(ch.message.tool_calls.length, 1, what);
          // the stream, reassembled by the openai client's helper, holds the same calls
          const s = c.chat.completions.stream(body);
          const fin = await s.finalChatCompletion();
          const sc = fin.choices[0];
          assert.equal(sc.finish_reason, 'tool_calls', what);
          assert.deepEqual(sc.message.tool_calls.map((k) => [k.type, k.function.name, k.function.arguments]),
            ch.message.tool_calls.map((k) => [k.type, k.function.name, k.function.arguments]), what);
          assert.ok(!sc.message.content, what);
          n++;
        }
      }
  }
  console.log(`tools: ${n} forced requests, every call valid, streamed = non-streamed`);
});

test('streamed tool-call deltas follow OpenAI: index, id, type, name, "" first; then argument fragments', async () => {
  const ts = toolsets[0];
  const s = await c.chat.completions.create({ model: 'm', messages: user, tools: ts.tools, tool_choice: 'required', seed: 7, stream: true });
  const calls = [];
  let finish, content = '', fragments = 0;
  for await (const chunk of s) {
    const d = chunk.choices[0]?.delta ?? {};
    content += d.content ?? '';
    if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
    for (const tc of d.tool_calls ?? []) {
      if (!calls[tc.index]) {
        assert.equal(tc.index, calls.length);
        assert.match(tc.id, /^call_/);
        assert.equal(tc.type, 'function');
        assert.equal(typeof tc.function.name, 'string');
        assert.equal(tc.function.arguments, '');
        calls[tc.index] = { name: tc.function.name, args: '' };
      } else {
        assert.equal(tc.id, undefined);
        calls[tc.index].args += tc.function.arguments;
        fragments++;
      }
    }
  }
  assert.equal(finish, 'tool_calls');
  assert.ok(calls.length > 0);
  assert.ok(fragments > calls.length, 'arguments enforced by grammar stream as they are generated');
  assert.doesNotMatch(content, /tool_call/);
  checkCalls(ts.tools, calls.map((k) => ({ id: 'call_x', type: 'function', function: { name: k.name, arguments: k.args } })), 'stream');
});

test('tool_choice none: no calls, all text is content; auto with strict tools still answers', async () => {
  const ts = toolsets[0];
  for (const seed of [1, 2]) {
    const r = await c.chat.completions.create({ model: 'm', messages: user, tools: ts.tools, tool_choice: 'none', seed, max_tokens: 40 });
    assert.equal(r.choices[0].message.tool_calls, undefined);
    assert.notEqual(r.choices[0].finish_reason, 'tool_calls');
    assert.equal(typeof r.choices[0].message.content, 'string');
  }
  const strict = ts.tools.map((t) => ({ ...t, function: { ...t.function, strict: true } }));
  const r = await c.chat.completions.create({ model: 'm', messages: user, tools: strict, seed: 1, max_tokens: 40 });
  assert.ok(['stop', 'length', 'tool_calls'].includes(r.choices[0].finish_reason));
  if (r.choices[0].message.tool_calls) checkCalls(ts.tools, r.choices[0].message.tool_calls, 'auto');
});

// The prompt Python's jinja2 renders from the model's template (tests/server/gguf_template.py).
function jinja(body) {
  return execFileSync(process.env.PYTHON ?? 'python3', [new URL('./gguf_template.py', import.meta.url).pathname, 'render', process.env.SPUD_MODEL_A],
    { input: JSON.stringify(body) }).toString();
}

test('multi-step: a call, its tool result, and the next turn render as jinja2 renders them', async () => {
  const ts = toolsets[0];
  const r = await c.chat.completions.create({ model: 'm', messages: user, tools: ts.tools, tool_choice: 'required', seed: 3, parallel_tool_calls: false });
  const msg = r.choices[0].message;
  const messages = [...user, msg, { role: 'tool', tool_call_id: msg.tool_calls[0].id, content: '{"temperature": 21}' }];
  const body = { messages, tools: ts.tools };
  const mine = await raw(S, '/apply-template', { body });
  assert.equal(mine.status, 200, mine.text);
  assert.equal(mine.json.prompt, jinja(body));
  assert.match(mine.json.prompt, /<tool_response>/);
  assert.ok(mine.json.prompt.includes(msg.tool_calls[0].function.name));
  const next = await c.chat.completions.create({ model: 'm', messages, tools: ts.tools, seed: 1, max_tokens: 8 });
  assert.ok(next.usage.prompt_tokens > r.usage.prompt_tokens);
});

test('responses: function_call output items, streamed events, then function_call_output with previous_response_id', async () => {
  const ts = toolsets[0];
  const tools = ts.tools.map((t) => ({ type: 'function', ...fnOf(t) }));
  const body = { model: 'm', input: 'Weather in Paris?', tools, tool_choice: 'required', parallel_tool_calls: false, seed: 2 };
  const r = await c.responses.create(body);
  assert.equal(r.status, 'completed');
  const calls = r.output.filter((o) => o.type === 'function_call');
  assert.equal(calls.length, 1);
  assert.match(calls[0].call_id, /^call_/);
  checkCalls(ts.tools, calls.map((k) => ({ id: k.call_id, type: 'function', function: { name: k.name, arguments: k.arguments } })), 'responses');
  // the stream: output_item.added (function_call), arguments delta and done, output_item.done
  const s = await c.responses.create({ ...body, stream: true });
  const types = [];
  let args = '', done, final;
  for await (const ev of s) {
    types.push(ev.type);
    if (ev.type === 'response.output_item.added' && ev.item.type === 'function_call') assert.equal(ev.item.arguments, '');
    if (ev.type === 'response.function_call_arguments.delta') args += ev.delta;
    if (ev.type === 'response.function_call_arguments.done') done = ev.arguments;
    if (ev.type === 'response.completed') final = ev.response;
  }
  assert.ok(types.includes('response.output_item.added') && types.includes('response.output_item.done'), types.join());
  assert.equal(args, done);
  assert.equal(done, calls[0].arguments);
  assert.deepEqual(final.output.filter((o) => o.type === 'function_call').map((o) => [o.name, o.arguments]), [[calls[0].name, calls[0].arguments]]);
  // the next turn: the tool's output, continuing the stored conversation
  const r2 = await c.responses.create({ model: 'm', previous_response_id: r.id, seed: 1, max_output_tokens: 8, tools,
    input: [{ type: 'function_call_output', call_id: calls[0].call_id, output: '{"temperature": 21}' }] });
  assert.ok(['completed', 'incomplete'].includes(r2.status));
  assert.ok(r2.usage.input_tokens > r.usage.input_tokens + 10);
  // the same conversation given as items renders what the chat route renders for its messages
  const r3 = await c.responses.create({ model: 'm', seed: 1, max_output_tokens: 8, tools, input: [
    { role: 'user', content: 'Weather in Paris?' },
    { type: 'function_call', call_id: calls[0].call_id, name: calls[0].name, arguments: calls[0].arguments },
    { type: 'function_call_output', call_id: calls[0].call_id, output: '{"temperature": 21}' }] });
  const chat = await raw(S, '/apply-template', { body: { tools: ts.tools, messages: [
    { role: 'user', content: 'Weather in Paris?' },
    { role: 'assistant', content: null, tool_calls: [{ id: calls[0].call_id, type: 'function', function: { name: calls[0].name, arguments: calls[0].arguments } }] },
    { role: 'tool', tool_call_id: calls[0].call_id, content: '{"temperature": 21}' }] } });
  assert.equal(chat.json.prompt, jinja({ tools: ts.tools, messages: [
    { role: 'user', content: 'Weather in Paris?' },
    { role: 'assistant', content: null, tool_calls: [{ id: calls[0].call_id, type: 'function', function: { name: calls[0].name, arguments: calls[0].arguments } }] },
    { role: 'tool', tool_call_id: calls[0].call_id, content: '{"temperature": 21}' }] }));
  const tok = await raw(S, '/tokenize', { body: { content: chat.json.prompt } });
  assert.equal(r3.usage.input_tokens, tok.json.tokens.length);
});

test('tool_choice auto: calls in the model text are parsed out (complete ones only), streamed and not', async () => {
  const ts = toolsets[0];
  // a grammar stands in for a model that decides to call: text, a call, and a malformed call
  const call = '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}\n</tool_call>';
  const cases = [
    ['Sure. ' + call, 'Sure.', [['get_weather', { location: 'Paris', unit: 'celsius' }]]],
    [call + '\n' + call.replace('Paris', 'Rome'), null, [['get_weather', { location: 'Paris', unit: 'celsius' }], ['get_weather', { location: 'Rome', unit: 'celsius' }]]],
    ['No call: <tool_call>{"name": oops}</tool_call>', 'No call: <tool_call>{"name": oops}</tool_call>', []],
  ];
  for (const [text, content, want] of cases) {
    const grammar = 'root ::= ' + JSON.stringify(text) + '\n';
    const body = { model: 'm', messages: user, tools: ts.tools, grammar, seed: 1, max_tokens: 200 };
    const r = await c.chat.completions.create(body);
    const m = r.choices[0].message;
    assert.equal(m.content, content, text);
    assert.deepEqual((m.tool_calls ?? []).map((k) => [k.function.name, JSON.parse(k.function.arguments)]), want, text);
    assert.equal(r.choices[0].finish_reason, want.length ? 'tool_calls' : 'stop');
    const fin = await c.chat.completions.stream(body).finalChatCompletion();
    assert.equal(fin.choices[0].message.content || null, content || null, text);
    assert.deepEqual((fin.choices[0].message.tool_calls ?? []).map((k) => [k.function.name, JSON.parse(k.function.arguments)]), want);
    // parallel_tool_calls false: only the first call comes back
    const one = await c.chat.completions.create({ ...body, parallel_tool_calls: false });
    assert.deepEqual((one.choices[0].message.tool_calls ?? []).map((k) => [k.function.name, JSON.parse(k.function.arguments)]), want.slice(0, 1));
  }
});

test('n choices each parse their own calls', async () => {
  const ts = toolsets[2];
  const body = { model: 'm', messages: user, tools: ts.tools, tool_choice: 'required', seed: 5, n: 3 };
  const r = await c.chat.completions.create(body);
  assert.equal(r.choices.length, 3);
  for (const ch of r.choices) {
    assert.equal(ch.finish_reason, 'tool_calls');
    checkCalls(ts.tools, ch.message.tool_calls, `choice ${ch.index}`);
  }
  const fin = await c.chat.completions.stream(body).finalChatCompletion();
  for (const ch of fin.choices)
    assert.deepEqual(ch.message.tool_calls.map((k) => [k.function.name, k.function.arguments]),
      r.choices[ch.index].message.tool_calls.map((k) => [k.function.name, k.function.arguments]));
});
