// run.mjs: the structured-output suite of script_structured.sh.
//
// Random-weight models (whose unconstrained output is noise) generate under every schema of schemas.json
// and every tool set of tools.json, with several seeds and three vocabularies (a 512-token byte-level BPE,
// GPT-2's 50K BPE, Llama 2's 32K SentencePiece with byte fallback). Every output must end on its own
// (the grammar completes and only end-of-generation is left) and validate under ajv; every tool call must
// name a declared function with arguments valid under its schema. Then: the grammar of each schema must
// refuse every example ajv calls invalid (and accept the hand-picked valid ones), and bad schemas and
// grammars must fail with the expected message.
//
// env: SPUD (binary), SHARED (fixtures), STRUCTURED_SEEDS (default 5), STRUCTURED_MAX_TOKENS (default 4000)
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { newAjv, parseCalls } from "./ajv_check.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const SPUD = process.env.SPUD;
const SHARED = process.env.SHARED ?? join(HERE, "../../../shared");
const SEEDS = +(process.env.STRUCTURED_SEEDS ?? 5);
const MAX_TOKENS = +(process.env.STRUCTURED_MAX_TOKENS ?? 4000);
const TMP = mkdtempSync(join(tmpdir(), "spud-structured-"));
const JOBS = Math.max(1, availableParallelism());
const fails = [];
const fail = (msg) => {
  fails.push(msg);
  console.log("FAIL: " + msg);
};

function run(args, input) {
  return new Promise((resolve) => {
    const p = spawn(SPUD, args, { stdio: ["pipe", "pipe", "pipe"] });
    const out = [], err = [];
    p.stdout.on("data", (d) => out.push(d));
    p.stderr.on("data", (d) => err.push(d));
    p.on("close", (code) => resolve({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") }));
    p.stdin.on("error", () => {}); // a process that exits before reading its input
    p.stdin.end(input ?? "");
  });
}

async function pool(items, fn) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(JOBS, items.length) }, worker));
}

const short = (s) => JSON.stringify(s.length > 240 ? s.slice(0, 240) + "..." : s);
const file = (name, text) => {
  const p = join(TMP, name);
  writeFileSync(p, text);
  return p;
};

const ajv = newAjv();
const compiled = new Map();
const validate = (schema, value) => {
  const key = JSON.stringify(schema);
  if (!compiled.has(key)) compiled.set(key, ajv.compile(typeof schema === "boolean" ? schema : structuredClone(schema)));
  const v = compiled.get(key);
  return v(value) ? null : ajv.errorsText(v.errors);
};

// ---- models
const base = ["gen-model", "--arch", "llama", "--dim", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
  "--ffn", "128", "--ctx", String(MAX_TOKENS + 64), "--type", "q8_0"];
const models = [
  { name: "bpe512", args: ["--vocab", "512", "--seed", "11"] },
  { name: "gpt2", args: ["--vocab-from", join(SHARED, "vocab/ggml-vocab-gpt-2.gguf"), "--seed", "12"] },
  { name: "spm", args: ["--vocab-from", join(SHARED, "vocab/ggml-vocab-llama-spm.gguf"), "--seed", "13"] },
];
for (const m of models) {
  m.path = join(TMP, m.name + ".gguf");
  const r = await run([...base, ...m.args, "-o", m.path]);
  if (r.code !== 0) {
    console.log(`cannot make model ${m.name}: ${r.stderr}`);
    process.exit(1);
  }
}
const prompts = ["Answer in JSON:", "hi", "The data is", "{", "Output:"];

// Generate one output; returns the text, or null (failure recorded) if spud failed or did not finish.
async function generate(what, model, seed, extra) {
  const r = await run(["run", "-m", model.path, "-p", prompts[seed % prompts.length], "-n", String(MAX_TOKENS),
    "--seed", String(seed), "--temp", "1", ...extra]);
  if (r.code !== 0) {
    fail(`${what}: spud run exited ${r.code}: ${r.stderr.trim()}`);
    return null;
  }
  if (!/stop: end of text/.test(r.stderr)) {
    fail(`${what}: did not finish within ${MAX_TOKENS} tokens: ${r.stderr.trim()} ${short(r.stdout)}`);
    return null;
  }
  return r.stdout.replace(/\n$/, "");
}

// ---- 1. schemas x seeds x vocabularies
const cases = JSON.parse(readFileSync(join(HERE, "schemas.json"), "utf8"));
const jobs = [];
for (const [ci, c] of cases.entries()) {
  c.file = file(`schema-${ci}.json`, JSON.stringify(c.schema));
  // Arbitrarily nested values ("nesting": "any") run on the 512-token vocabulary: with a 50K vocabulary a
  // random model closes a string only when it happens to sample one of the ~0.5% of tokens holding a quote,
  // so unbounded nesting of unbounded strings can outrun any token budget (a random walk, not a grammar fault).
  for (let s = 1; s <= SEEDS; s++)
    jobs.push({ c, seed: s * 1000 + ci, model: c.nesting === "any" ? models[0] : models[(s - 1) % models.length] });
}
let valid = 0, tokensNote = 0;
const t0 = Date.now();
await pool(jobs, async (j) => {
  const what = `${j.c.name} (seed ${j.seed}, ${j.model.name})`;
  const text = await generate(what, j.model, j.seed, ["--json-schema", j.c.file]);
  if (text === null) return;
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return fail(`${what}: output does not parse (${e.message}): ${short(text)}`);
  }
  const err = validate(j.c.schema, value);
  if (err) return fail(`${what}: invalid (${err}): ${short(text)}`);
  valid++;
  tokensNote += text.length;
});
console.log(`schemas: ${valid}/${jobs.length} outputs valid (${((100 * valid) / jobs.length).toFixed(1)}%) over ${cases.length} schemas x ${SEEDS} seeds, ` +
  `3 vocabularies; mean output ${(tokensNote / Math.max(valid, 1)).toFixed(0)} bytes; ${((Date.now() - t0) / 1000).toFixed(1)} s`);

// ---- 2. json_object mode
let objOk = 0;
await pool([1, 2, 3, 4, 5, 6], async (s) => {
  const m = models[0]; // any nesting: see above
  const text = await generate(`--json-object (seed ${s}, ${m.name})`, m, s, ["--json-object"]);
  if (text === null) return;
  try {
    const v = JSON.parse(text);
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not an object");
    objOk++;
  } catch (e) {
    fail(`--json-object seed ${s}: ${e.message}: ${short(text)}`);
  }
});
console.log(`json_object: ${objOk}/6 outputs are JSON objects`);

// ---- 3. forced tool calls
const toolsets = JSON.parse(readFileSync(join(HERE, "tools.json"), "utf8"));
const tjobs = [];
for (const [ti, t] of toolsets.entries()) {
  t.file = file(`tools-${ti}.json`, JSON.stringify(t.tools));
  const names = t.tools.map((x) => (x.function ?? x).name);
  for (const format of ["hermes", "llama3", "mistral"])
    for (const choice of ["required", names[names.length - 1]])
      for (let s = 1; s <= 2; s++) {
        // Several calls only in the list syntax (mistral): after a Hermes call a random model picks the end of
        // generation about as often as any one of thousands of tokens, so it keeps adding calls.
        const parallel = format === "mistral" && s === 2;
        tjobs.push({ t, format, choice, parallel, seed: 100 * ti + 10 * s + (choice === "required" ? 0 : 5), model: models[(s + ti) % models.length] });
      }
}
let callsOk = 0;
await pool(tjobs, async (j) => {
  const what = `tools ${j.t.name} ${j.format} ${j.choice}${j.parallel ? " parallel" : ""} (seed ${j.seed}, ${j.model.name})`;
  const text = await generate(what, j.model, j.seed, ["--tools", j.t.file, "--tool-format", j.format, "--tool-choice", j.choice,
    ...(j.parallel ? ["--parallel-tools"] : [])]);
  if (text === null) return;
  try {
    const calls = parseCalls(text, j.format);
    if (!j.parallel && calls.length !== 1) throw new Error(`${calls.length} calls without --parallel-tools`);
    for (const c of calls) {
      const fn = j.t.tools.map((x) => x.function ?? x).find((f) => f.name === c.name);
      if (!fn) throw new Error(`call to undeclared function ${JSON.stringify(c.name)}`);
      if (j.choice !== "required" && c.name !== j.choice) throw new Error(`called ${c.name}, not ${j.choice}`);
      const err = validate(fn.parameters ?? { type: "object", properties: {}, additionalProperties: false }, c.args);
      if (err) throw new Error(`arguments of ${c.name} invalid: ${err}`);
    }
    callsOk++;
  } catch (e) {
    fail(`${what}: ${e.message}: ${short(text)}`);
  }
});
console.log(`tool calls: ${callsOk}/${tjobs.length} valid calls to declared functions with valid arguments`);

// ---- 4. soundness on examples: the grammar refuses what ajv refuses
let exChecked = 0;
const exJobs = [];
for (const c of cases) {
  const g = await run(["schema2gbnf", c.file]);
  if (g.code !== 0) {
    fail(`${c.name}: schema2gbnf failed: ${g.stderr.trim()}`);
    continue;
  }
  const gfile = file(`${c.name}.gbnf`, g.stdout);
  for (const [k, ex] of [...(c.valid ?? []).map((x) => [true, x]), ...(c.invalid ?? []).map((x) => [false, x])]) {
    const text = typeof ex === "string" && ex.startsWith("RAW:") ? ex.slice(4) : JSON.stringify(ex);
    let ajvValid;
    try {
      ajvValid = validate(c.schema, JSON.parse(text)) === null;
    } catch {
      ajvValid = false;
    }
    exJobs.push({ c, gfile, text, listed: k, ajvValid });
  }
}
await pool(exJobs, async (j) => {
  const r = await run(["grammar", "check", j.gfile, "--text-file", "-"], j.text);
  const match = r.code === 0;
  if (r.code > 1) return fail(`${j.c.name}: grammar check failed: ${r.stderr.trim()}`);
  exChecked++;
  if (match && !j.ajvValid) fail(`${j.c.name}: the grammar accepts ${short(j.text)}, which ajv refuses`);
  if (!match && j.listed && j.ajvValid) fail(`${j.c.name}: the grammar refuses the valid example ${short(j.text)} (${r.stdout.trim()})`);
  if (j.listed !== j.ajvValid) fail(`${j.c.name}: example ${short(j.text)} is listed as ${j.listed ? "valid" : "invalid"} but ajv says otherwise`);
});
console.log(`examples: ${exChecked} checked against ajv's verdicts`);

// ---- 5. bad input
let badOk = 0, badN = 0;
for (const [i, b] of JSON.parse(readFileSync(join(HERE, "bad_schemas.json"), "utf8")).entries()) {
  const f = file(`bad-${i}.json`, b.raw ?? JSON.stringify(b.schema));
  for (const strict of b.strict_only ? [true, false] : [true]) {
    badN++;
    const r = await run(["schema2gbnf", f, ...(strict ? [] : ["--no-strict"])]);
    if (!strict) {
      if (r.code !== 0) fail(`bad schema ${i} with --no-strict: expected success, got: ${r.stderr.trim()}`);
      else badOk++;
      continue;
    }
    if (r.code !== 1 || !r.stderr.includes(b.error)) fail(`bad schema ${i} (${short(b.raw ?? JSON.stringify(b.schema))}): expected exit 1 and "${b.error}", got ${r.code}: ${r.stderr.trim()}`);
    else badOk++;
  }
}
for (const [i, b] of JSON.parse(readFileSync(join(HERE, "bad_grammars.json"), "utf8")).entries()) {
  badN++;
  const f = file(`bad-${i}.gbnf`, b.grammar);
  const r = await run(["grammar", "check", f]);
  if (r.code !== 1 || !r.stderr.includes(b.error)) fail(`bad grammar ${i} (${short(b.grammar)}): expected exit 1 and "${b.error}", got ${r.code}: ${r.stderr.trim()}`);
  else badOk++;
}
{ // the same errors through spud run
  badN += 2;
  const r1 = await run(["run", "-m", models[0].path, "-p", "x", "--grammar-file", file("bad-run.gbnf", "root ::= (")]);
  if (r1.code !== 1 || !/spud run: .*line 1, column 10/.test(r1.stderr)) fail(`spud run with a bad grammar: ${r1.code}: ${r1.stderr.trim()}`);
  else badOk++;
  const r2 = await run(["run", "-m", models[0].path, "-p", "x", "--json-schema", file("bad-run.json", '{"type":"object","properties":{"a":{"not":{}}}}')]);
  if (r2.code !== 1 || !r2.stderr.includes("/properties/a: unsupported keyword 'not'")) fail(`spud run with a bad schema: ${r2.code}: ${r2.stderr.trim()}`);
  else badOk++;
}
console.log(`bad input: ${badOk}/${badN} refused with the expected message`);

rmSync(TMP, { recursive: true, force: true });
if (fails.length) {
  console.log(`${fails.length} failure(s)`);
  process.exit(1);
}
console.log("all structured-output checks passed");
