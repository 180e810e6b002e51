// Shared by the serve benchmarks: their --name value arguments, and a `spud serve` of their own.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const { default: OpenAI } = await import(createRequire(root + '/package.json').resolve('openai'));

// { name: value } of every `--name value` pair on the command line.
export const args = Object.fromEntries(
  process.argv.slice(2).reduce((a, v, i, all) => (v.startsWith('--') ? [...a, [v.slice(2), all[i + 1]]] : a), []));

// `spud serve` on a free port with the given extra arguments; resolves once it says it is ready, to the
// process, its base URL and an openai client for it. stop() ends it.
export async function startServer(spud, serveArgs) {
  const srv = spawn(spud, ['serve', '--port', '0', ...serveArgs], { stdio: ['ignore', 'ignore', 'pipe'] });
  const url = await new Promise((ok, fail) => {
    let log = '';
    srv.stderr.on('data', (d) => {
      log += d;
      const m = /listening on (http:\/\/\S+)/.exec(log);
      if (m && /ready in/.test(log)) ok(m[1]);
    });
    srv.on('exit', (code) => fail(new Error('server exited ' + code + ': ' + log)));
  });
  const client = new OpenAI({ baseURL: url + '/v1', apiKey: 'none', maxRetries: 0, timeout: 3600e3 });
  const stop = async () => {
    srv.kill('SIGTERM');
    await new Promise((r) => srv.on('exit', r));
  };
  return { url, client, stop };
}
