// bench/tokenize.mjs: spud's tokenizer against npm tiktoken, same text, same
// vocabulary (o200k_base, cl100k_base), one thread each, in one run.
//
//   node bench/tokenize.mjs [--spud build/spud] [--mb 5] [--min-time 2] [--out DIR]
//
// Texts (tests/tok_corpus.mjs, deterministic, --mb megabytes each): plain
// text (prose in many scripts and code), and the differential test's mixed
// corpus (which adds long white-space and digit runs, emoji, odd characters:
// tiktoken's quadratic merge loop slows down on its long runs); then
// adversarial single-word inputs (a run of one
// letter, of spaces, of digits, of " \n") at 1, 2 and 4 MB for spud, to show
// linear time. tiktoken gets the adversarial inputs at 16/32/64 KB only: its
// merge loop is quadratic in the length of one piece.
// Encode MB/s counts input bytes; decode MB/s counts the same bytes (the
// text the ids decode to). Timings: best of repeated runs for at least
// --min-time seconds. A benchmark, not a test: nothing is asserted.
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync, existsSync, readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { corpus } from "../tests/tok_corpus.mjs";

const require = createRequire(import.meta.url);
const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), [])
);
const SPUD = args.spud ?? join(root, "build", "spud");
const MB = Number(args.mb ?? 5);
const MIN_TIME = Number(args["min-time"] ?? 2);
const OUT = args.out ?? join(root, "build", "bench-tokenize");
mkdirSync(OUT, { recursive: true });

function run(cmd, argv) {
  const r = spawnSync(cmd, argv, { encoding: "utf8", maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

// vocabularies, converted from the same rank files tiktoken uses
const vocab = {};
for (const name of ["o200k_base", "cl100k_base"]) {
  vocab[name] = join(OUT, name + ".gguf");
  if (!existsSync(vocab[name]))
    run(SPUD, ["convert-vocab", "--tiktoken", join(root, "node_modules/tiktoken/encoders", name + ".json"), "-o", vocab[name]]);
}

// texts
const texts = [];
const plain = corpus(2024, MB * 1e6, { plain: true }).join("\n");
const mixed = corpus(2024, MB * 1e6).join("\n");
texts.push({ name: `plain text ${MB} MB (prose in 48 languages, code)`, text: plain, tiktoken: true });
texts.push({ name: `mixed corpus ${MB} MB (also white-space and digit runs, emoji, odd characters)`, text: mixed, tiktoken: true });
for (const [label, unit] of [["one letter", "a"], ["spaces", " "], ["digits", "7"], ["' \\n' pairs", " \n"]]) {
  for (const mb of [1, 2, 4]) texts.push({ name: `${label} ${mb} MB`, text: unit.repeat((mb * 1e6) / unit.length), tiktoken: false });
  for (const kb of [16, 32, 64]) texts.push({ name: `${label} ${kb} KB`, text: unit.repeat((kb * 1e3) / unit.length), tiktoken: true, spud: false });
}

function best(fn) {
  let bestT = Infinity, spent = 0, n = 0, out;
  while (spent < MIN_TIME || n < 2) {
    const t0 = process.hrtime.bigint();
    out = fn();
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    spent += dt, n++;
    if (dt < bestT) bestT = dt;
    if (dt > 30) break; // quadratic cases: one run is enough
  }
  return { t: bestT, out, n };
}

const { get_encoding } = require("tiktoken");
const rows = [];
for (const t of texts) {
  const bytes = Buffer.byteLength(t.text);
  const path = join(OUT, "text.txt");
  writeFileSync(path, t.text);
  for (const name of ["o200k_base", "cl100k_base"]) {
    const row = { text: t.name, vocab: name, bytes };
    if (t.spud !== false) {
      const r = JSON.parse(run(SPUD, ["bench-tokenize", "-m", vocab[name], "-f", path, "--min-time", String(MIN_TIME), "--json"]));
      Object.assign(row, { spud_enc: r.encode_mb_s, spud_dec: r.decode_mb_s, tokens: r.tokens });
    }
    if (t.tiktoken) {
      const enc = get_encoding(name);
      const e = best(() => enc.encode_ordinary(t.text));
      const d = best(() => enc.decode(e.out));
      Object.assign(row, { tt_enc: bytes / 1e6 / e.t, tt_dec: bytes / 1e6 / d.t, tt_tokens: e.out.length });
      enc.free();
    }
    rows.push(row);
  }
}

const f = (x) => (x === undefined ? "" : x.toFixed(2));
const ratio = (a, b) => (a === undefined || b === undefined ? "" : (a / b).toFixed(1) + "x");
const ttVersion = JSON.parse(readFileSync(join(root, "node_modules/tiktoken/package.json"), "utf8")).version;
console.log(`spud ${SPUD} vs tiktoken ${ttVersion} (npm, WASM); one thread; MB/s of input text`);
console.log("| text | vocab | bytes | tokens | spud enc | tiktoken enc | enc ratio | spud dec | tiktoken dec | dec ratio |");
console.log("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
for (const r of rows) {
  if (r.spud_enc !== undefined && r.tt_enc !== undefined && r.tokens !== r.tt_tokens)
    throw new Error(`${r.text} ${r.vocab}: ${r.tokens} tokens from spud, ${r.tt_tokens} from tiktoken`);
  console.log(`| ${r.text} | ${r.vocab} | ${r.bytes} | ${r.tokens ?? r.tt_tokens} | ${f(r.spud_enc)} | ${f(r.tt_enc)} | ${ratio(r.spud_enc, r.tt_enc)} | ${f(r.spud_dec)} | ${f(r.tt_dec)} | ${ratio(r.spud_dec, r.tt_dec)} |`);
}
