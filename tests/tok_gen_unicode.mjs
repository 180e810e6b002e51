// tok_gen_unicode.mjs: writes src/tokenizer_unicode.h, the Unicode data that
// spud's tokenizers use, from the Unicode data of the running Node (V8 + ICU),
// so that classes and normalization come from one Unicode version. Run it
// again when the Unicode version should change:
//   node tests/tok_gen_unicode.mjs > src/tokenizer_unicode.h
//
// Tables:
//   classes: flags = cls_stage2[cls_stage1[cp >> 7] * 128 + (cp & 127)], one
//            byte per code point, identical 128-code-point blocks stored once.
//   NFC:     nfc_stage1/2 the same way: the canonical combining class as an
//            order-preserving rank (0 = starter) | TOKU_NFC_DECOMP | TOKU_NFC_SECOND;
//            full canonical decompositions; primary composition pairs.
//            Node has no API for these; they are read off String.normalize:
//            the order of two marks after NFD gives their relative class, the
//            NFD of a character its decomposition, NFC of a pair its composite.
const classes = [
  ["TOKU_L", "\\p{L}", "letter (Lu Ll Lt Lm Lo)"],
  ["TOKU_N", "\\p{N}", "number (Nd Nl No)"],
  ["TOKU_M", "\\p{M}", "mark (Mn Mc Me)"],
  ["TOKU_P", "\\p{P}", "punctuation"],
  ["TOKU_S", "\\p{S}", "symbol"],
  ["TOKU_WS", "\\p{White_Space}", "White_Space (the \\s of HF tokenizers and tiktoken)"],
  ["TOKU_UP", "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]", "o200k's upper-case-like class"],
  ["TOKU_LO", "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]", "o200k's lower-case-like class"],
];
const res = classes.map(([, rx]) => new RegExp("^" + rx + "$", "u"));
const flags = new Uint8Array(0x110000);
for (let c = 0; c < 0x110000; c++) {
  if (c >= 0xd800 && c <= 0xdfff) continue; // never in UTF-8 text
  const s = String.fromCodePoint(c);
  let f = 0;
  for (let i = 0; i < res.length; i++) if (res[i].test(s)) f |= 1 << i;
  flags[c] = f;
}
const B = 128;
function twoStage(values) {
  const blocks = new Map();
  const stage1 = [];
  const stage2 = [];
  for (let b = 0; b < 0x110000 / B; b++) {
    const blk = values.subarray(b * B, b * B + B);
    const key = blk.join(",");
    if (!blocks.has(key)) {
      blocks.set(key, blocks.size);
      stage2.push(...blk);
    }
    stage1.push(blocks.get(key));
  }
  if (blocks.size > 256) throw new Error("more than 256 distinct blocks: widen stage1");
  return { stage1, stage2 };
}
const cls = twoStage(flags);

// ---- NFC ----
const str = (...cps) => String.fromCodePoint(...cps);
const cpsOf = (s) => Array.from(s, (c) => c.codePointAt(0));
const isHangulSyllable = (c) => c >= 0xac00 && c <= 0xd7a3;
const valid = (c) => !(c >= 0xd800 && c <= 0xdfff);
// non-starters among the characters NFD leaves alone: a mark of class 1
// (U+0334) moves before them, or they move before a class-230 mark (U+0301)
const nonStarters = [];
for (let c = 0; c < 0x110000; c++) {
  if (!valid(c) || c === 0x334 || c === 0x301) continue;
  const s = str(c);
  if (s.normalize("NFD") !== s) continue;
  if (str(0x61, c, 0x334).normalize("NFD") === str(0x61, 0x334, c) ||
      str(0x61, 0x301, c).normalize("NFD") === str(0x61, c, 0x301)) nonStarters.push(c);
}
nonStarters.push(0x334, 0x301);
const cmpClass = (x, y) => {
  if (x === y) return 0;
  if (str(0x61, y, x).normalize("NFD") === str(0x61, x, y)) return -1; // x sorts first: lower class
  if (str(0x61, x, y).normalize("NFD") === str(0x61, y, x)) return 1;
  return 0;
};
nonStarters.sort((a, b) => cmpClass(a, b) || a - b);
const cccRank = new Map();
let rank = 0;
for (let i = 0; i < nonStarters.length; i++) {
  if (i === 0 || cmpClass(nonStarters[i - 1], nonStarters[i]) !== 0) rank++;
  cccRank.set(nonStarters[i], rank);
}
if (rank >= 64) throw new Error(`${rank} combining classes: more than the 6 bits reserved`);
// full canonical decompositions (Hangul syllables are done by arithmetic)
const decomp = [];
for (let c = 0; c < 0x110000; c++) {
  if (!valid(c) || isHangulSyllable(c)) continue;
  const d = str(c).normalize("NFD");
  if (d !== str(c)) decomp.push([c, cpsOf(d)]);
}
// primary composites: NFC keeps them, and some char pair composes to them
const pairs = [];
for (const [c, d] of decomp) {
  if (str(c).normalize("NFC") !== str(c)) continue; // excluded or singleton
  let found = null;
  for (let j = d.length - 1; j >= 0 && !found; j--) {
    const rest = d.filter((_, k) => k !== j);
    const a = cpsOf(str(...rest).normalize("NFC"));
    if (a.length === 1 && str(a[0], d[j]).normalize("NFC") === str(c)) found = [a[0], d[j]];
  }
  if (!found) throw new Error("no composition pair for U+" + c.toString(16));
  pairs.push([found[0], found[1], c]);
}
pairs.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
const nfc = new Uint8Array(0x110000);
for (const [c, r] of cccRank) nfc[c] = r;
for (const [c] of decomp) nfc[c] |= 0x40;
for (let c = 0xac00; c <= 0xd7a3; c++) nfc[c] |= 0x40;
for (const [, b] of pairs) nfc[b] |= 0x80;
for (let c = 0x1161; c <= 0x1175; c++) nfc[c] |= 0x80; // Hangul V and T jamo follow L and LV
for (let c = 0x11a8; c <= 0x11c2; c++) nfc[c] |= 0x80;
const nfcTab = twoStage(nfc);
const pool = [];
const decompRows = decomp.map(([c, d]) => { const off = pool.length; pool.push(...d); return [c, off, d.length]; });
const hex = (a, per) => {
  const lines = [];
  for (let i = 0; i < a.length; i += per)
    lines.push("    " + Array.from(a.slice(i, i + per), (v) => "0x" + v.toString(16).padStart(2, "0")).join(",") + ",");
  return lines.join("\n");
};
const out = [];
out.push(`/* tokenizer_unicode.h: Unicode ${process.versions.unicode} data for the tokenizers: code point classes for`);
out.push(` * the pre-tokenizers, canonical classes, decompositions and compositions for NFC.`);
out.push(` * GENERATED by tests/tok_gen_unicode.mjs (Node ${process.versions.node}, ICU ${process.versions.icu}); do not edit.`);
out.push(` * Included once, by tokenizer.c. */`);
out.push(`#ifndef SPUD_TOKENIZER_UNICODE_H`);
out.push(`#define SPUD_TOKENIZER_UNICODE_H`);
out.push(``);
out.push(`#include <stdint.h>`);
out.push(``);
out.push(`#define TOKU_UNICODE_VERSION "${process.versions.unicode}"`);
classes.forEach(([name, , what], i) => out.push(`#define ${name} 0x${(1 << i).toString(16).padStart(2, "0")} /* ${what} */`));
out.push(``);
out.push(`static const uint8_t toku_cls_stage1[${cls.stage1.length}] = {`);
out.push(hex(cls.stage1, 16));
out.push(`};`);
out.push(``);
out.push(`static const uint8_t toku_cls_stage2[${cls.stage2.length}] = {`);
out.push(hex(cls.stage2, 16));
out.push(`};`);
out.push(``);
out.push(`static inline uint8_t toku_flags(uint32_t cp) {`);
out.push(`    if (cp >= 0x110000) return 0;`);
out.push(`    return toku_cls_stage2[(uint32_t)toku_cls_stage1[cp >> 7] * ${B} + (cp & ${B - 1})];`);
out.push(`}`);
out.push(``);
out.push(`/* NFC: canonical combining class rank (bits 0-5; 0 = starter), has a`);
out.push(` * decomposition, is the second character of some composition. */`);
out.push(`#define TOKU_NFC_CCC 0x3f`);
out.push(`#define TOKU_NFC_DECOMP 0x40`);
out.push(`#define TOKU_NFC_SECOND 0x80`);
out.push(``);
out.push(`static const uint8_t toku_nfc_stage1[${nfcTab.stage1.length}] = {`);
out.push(hex(nfcTab.stage1, 16));
out.push(`};`);
out.push(``);
out.push(`static const uint8_t toku_nfc_stage2[${nfcTab.stage2.length}] = {`);
out.push(hex(nfcTab.stage2, 16));
out.push(`};`);
out.push(``);
out.push(`static inline uint8_t toku_nfc(uint32_t cp) {`);
out.push(`    if (cp >= 0x110000) return 0;`);
out.push(`    return toku_nfc_stage2[(uint32_t)toku_nfc_stage1[cp >> 7] * ${B} + (cp & ${B - 1})];`);
out.push(`}`);
out.push(``);
out.push(`/* Full canonical decompositions, by code point (not Hangul syllables). */`);
out.push(`typedef struct { uint32_t cp; uint16_t off; uint8_t len; } toku_decomp;`);
out.push(`static const uint32_t toku_decomp_pool[${pool.length}] = {`);
for (let i = 0; i < pool.length; i += 10) out.push("    " + pool.slice(i, i + 10).map((c) => "0x" + c.toString(16)).join(",") + ",");
out.push(`};`);
out.push(`static const toku_decomp toku_decomps[${decompRows.length}] = {`);
for (let i = 0; i < decompRows.length; i += 5) out.push("    " + decompRows.slice(i, i + 5).map(([c, o, l]) => `{0x${c.toString(16)},${o},${l}}`).join(",") + ",");
out.push(`};`);
out.push(``);
out.push(`/* Primary composition pairs, sorted by (first, second) (not Hangul). */`);
out.push(`typedef struct { uint32_t first, second, composite; } toku_comp;`);
out.push(`static const toku_comp toku_comps[${pairs.length}] = {`);
for (let i = 0; i < pairs.length; i += 4) out.push("    " + pairs.slice(i, i + 4).map(([a, b, c]) => `{0x${a.toString(16)},0x${b.toString(16)},0x${c.toString(16)}}`).join(",") + ",");
out.push(`};`);
out.push(``);
out.push(`#endif`);
process.stdout.write(out.join("\n") + "\n");
