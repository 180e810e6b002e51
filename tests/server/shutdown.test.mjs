// SIGTERM while a response streams: the response finishes, then the server exits (the script checks how).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { B, PID_B, NO_SPECIAL, client, raw } from './common.mjs';

test('SIGTERM finishes the running stream, then refuses new work', async () => {
  const c = client(B);
  const s = await c.chat.completions.create({
    model: 'm', messages: [{ role: 'user', content: 'Go on' }], max_tokens: 1000, temperature: 0,
    logit_bias: NO_SPECIAL, stream: true, stream_options: { include_usage: true },
  });
  let n = 0, finish, usage, signalled = false;
  for await (const ch of s) {
    if (ch.usage) usage = ch.usage;
    else if (ch.choices[0].delta.content) n++;
    if (ch.choices[0]?.finish_reason) finish = ch.choices[0].finish_reason;
    if (n === 3 && !signalled) {
      signalled = true;
      process.kill(PID_B, 'SIGTERM');
      // new connections are refused (the listening socket is closed) or answered 503
      await new Promise((r) => setTimeout(r, 100));
      const r = await raw(B, '/v1/models', { method: 'GET' }).catch((e) => ({ status: 'refused', e }));
      assert.ok(r.status === 'refused' || r.status === 503, String(r.status));
    }
  }
  assert.ok(signalled);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, 1000);
});
