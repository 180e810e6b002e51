// Tool calls and reasoning in other families' syntax: servers L (Llama 3.1's template: JSON calls with
// "parameters"), M (Mistral Nemo's: [TOOL_CALLS] and 9-character call ids) and R (DeepSeek R1 distill's:
// <｜tool▁calls▁begin｜> calls; the generation prompt opens <think>). All run
// the tiny random-weight model; every call must be valid (ajv) and multi-step prompts must equal jinja2's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import OpenAI from 'openai';
import { newAjv } from '../structured/ajv_check.mjs';
import { raw } from './common.mjs';

const ajv = newAjv();
const toolsets = JSON.parse(readFileSync(new URL('../structured/tools.json', import.meta.url), 'utf8'));
const user = [{ role: 'user', content: 'What is the weather in Paris?' }];
const servers = [
  { name: 'llama3', url: process.env.SPUD_URL_L, model: process.env.SPUD_MODEL_L, id: /^call_[0-9a-f]{24}$/ },
  { name: 'mistral', url: process.env.SPUD_URL_M, model: process.env.SPUD_MODEL_M, id: /^[A-Za-z0-9]{9}$/ },
  { name: 'deepseek', url: process.env.SPUD_URL_R, model: process.env.SPUD_MODEL_R, id: /^call_/ },
];
const client = (url) => new OpenAI({ baseURL: url + '/v1', apiKey: 'none', maxRetries: 0, timeout: 300000 });

function jinja(model, body) {
  return execFileSync(process.env.PYTHON ?? 'python3', [new URL('./gguf_template.py', import.meta.url).pathname, 'render', model],
    { input: JSON.stringify(body) }).toString();
}

function checkCall(tools, call, what, idRe) {
  assert.match(call.id, idRe, what);
  const fn = tools.map((t) => t.function).find((f) => f.name === call.function.name);
  assert.ok(fn, `${what}: undeclared ${call.function.name}`);
  const v = ajv.compile(structuredClone(fn.parameters ?? { type: 'object' }));
  assert.ok(v(JSON.parse(call.function.arguments)), `${what}: ${ajv.errorsText(v.errors)}: ${call.function.arguments}`);
}

for (const srv of servers) {
  test(`${srv.name}: forced calls are valid, streamed = not, and a multi-step prompt equals jinja2's`, async () => {
    const c = client(srv.url);
    for (const ts of toolsets) {
      for (const [k, tool_choice] of ['required', { type: 'function', function: { name: ts.tools.at(-1).function.name } }].entries()) {
        // R1's prompt opens <think>: a random model thinks its whole budget (reasoning_effort) before the call
        const body = { model: 'm', messages: user, tools: ts.tools, tool_choice, seed: 10 + k, parallel_tool_calls: false, max_tokens: 3000, reasoning_effort: 'low' };
        const what = `${srv.name} ${ts.name} ${JSON.stringify(tool_choice)}`;
        const r = await c.chat.completions.create(body);
        const ch = r.choices[0];
        assert.equal(ch.finish_reason, 'tool_calls', `${what}: ${JSON.stringify(ch.message)}`);
        assert.equal(ch.message.tool_calls.length, 1, what);
        checkCall(ts.tools, ch.message.tool_calls[0], what, srv.id);
        if (tool_choice.function) assert.equal(ch.message.tool_calls[0].function.name, tool_choice.function.name);
        const fin = await c.chat.completions.stream(body).finalChatCompletion();
        assert.deepEqual(fin.choices[0].message.tool_calls.map((t) => [t.function.name, t.function.arguments]),
          ch.message.tool_calls.map((t) => [t.function.name, t.function.arguments]), what);
        // the call and its result, rendered back
        const messages = [...user, ch.message, { role: 'tool', tool_call_id: ch.message.tool_calls[0].id, content: '{"ok": true}' }];
        const got = await raw(srv.url, '/apply-template', { body: { messages, tools: ts.tools } });
        assert.equal(got.status, 200, got.text);
        assert.equal(got.json.prompt, jinja(srv.model, { messages, tools: ts.tools }), what);
      }
    }
  });
}

test('reasoning: a prompt that opens <think> splits reasoning_content from content, streamed and not', async () => {
  const c = client(process.env.SPUD_URL_R);
  // the grammar stands in for a thinking model: some thought, </think>, then the answer
  const grammar = 'root ::= "Let me see" [a-z ]{0,12} "</think>" "\\n\\n" "Answer: " [0-9]{1,3}\n';
  for (const seed of [1, 2]) {
    const body = { model: 'm', messages: user, seed, grammar, max_tokens: 200 };
    const r = await c.chat.completions.create(body);
    const m = r.choices[0].message;
    assert.match(m.reasoning_content, /^Let me see[a-z ]{0,12}$/);
    assert.match(m.content, /^Answer: [0-9]{1,3}$/);
    assert.equal(r.choices[0].finish_reason, 'stop');
    const s = await c.chat.completions.create({ ...body, stream: true });
    let reasoning = '', content = '';
    for await (const ch of s) {
      reasoning += ch.choices[0]?.delta?.reasoning_content ?? '';
      content += ch.choices[0]?.delta?.content ?? '';
    }
    assert.equal(reasoning, m.reasoning_content);
    assert.equal(content, m.content);
  }
  // Responses: a reasoning output item (reasoning_text), then the message
  const rbody = { model: 'm', input: 'Weather?', seed: 1, grammar, max_output_tokens: 200, store: false };
  const rr = await c.responses.create(rbody);
  assert.deepEqual(rr.output.map((o) => o.type), ['reasoning', 'message']);
  assert.match(rr.output[0].content[0].text, /^Let me see[a-z ]{0,12}$/);
  assert.match(rr.output_text, /^Answer: [0-9]{1,3}$/);
  const rs = await c.responses.create({ ...rbody, stream: true });
  let rdelta = '', rdone, tdelta = '', final;
  for await (const ev of rs) {
    if (ev.type === 'response.reasoning_text.delta') rdelta += ev.delta;
    if (ev.type === 'response.reasoning_text.done') rdone = ev.text;
    if (ev.type === 'response.output_text.delta') tdelta += ev.delta;
    if (ev.type === 'response.completed') final = ev.response;
  }
  assert.equal(rdelta, rr.output[0].content[0].text);
  assert.equal(rdone, rdelta);
  assert.equal(tdelta, rr.output_text);
  assert.deepEqual(final.output.map((o) => o.type), ['reasoning', 'message']);
  // no </think> at all (a random model): everything is reasoning, the message is empty
  const only = await c.responses.create({ model: 'm', input: 'x', seed: 3, max_output_tokens: 6, store: false });
  assert.deepEqual(only.output.map((o) => o.type), ['reasoning', 'message']);
  assert.equal(only.output_text, '');
  // a template without <think> leaves the same text in content
  const plain = await client(process.env.SPUD_URL_L).chat.completions.create({ model: 'm', messages: user, seed: 1, grammar, max_tokens: 200 });
  assert.match(plain.choices[0].message.content, /^Let me see[a-z ]{0,12}<\/think>\n\nAnswer: [0-9]{1,3}$/);
  assert.equal(plain.choices[0].message.reasoning_content, undefined);
});
