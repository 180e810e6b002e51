// tok_vectors.mjs: llama.cpp's tokenizer test vectors (../shared/vocab/*.inp,
// .out: ids from the original Hugging Face tokenizers, no BOS, special tokens
// not parsed) against a GGUF file, through one `spud tokenize --jsonl` run.
//
//   node tests/tok_vectors.mjs SPUD VOCAB.gguf VECTORS_BASE   (VECTORS_BASE.inp / .out)
// Prints "<name> <passed>/<total>"; exits 1 on any mismatch.
import { readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { basename } from "node:path";

const [spud, gguf, base] = process.argv.slice(2);
const inputs = readFileSync(base + ".inp", "utf8").split("\n__ggml_vocab_test__\n");
inputs.pop(); // after the last separator
const expected = readFileSync(base + ".out", "utf8").split("\n").slice(0, inputs.length);
const r = spawnSync(spud, ["tokenize", "-m", gguf, "--jsonl", "--no-bos"], {
  input: inputs.map((s) => JSON.stringify(s)).join("\n") + "\n",
  encoding: "utf8",
  maxBuffer: 1 << 26,
});
if (r.status !== 0) {
  console.error(r.stderr);
  process.exit(1);
}
const got = r.stdout.split("\n");
let pass = 0;
inputs.forEach((s, i) => {
  const want = expected[i].trim() ? expected[i].trim().split(/\s+/).map(Number) : [];
  const ids = JSON.parse(got[i]);
  if (JSON.stringify(ids) === JSON.stringify(want)) pass++;
  else console.error(`${basename(base)} with ${basename(gguf)}: ${JSON.stringify(s)}\n  expected ${JSON.stringify(want)}\n  got      ${JSON.stringify(ids)}`);
});
console.log(`${basename(base)} (vocab ${basename(gguf)}): ${pass}/${inputs.length}`);
process.exit(pass === inputs.length && inputs.length > 0 ? 0 : 1);
