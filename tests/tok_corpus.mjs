// tok_corpus.mjs: deterministic test text for the tokenizer differential
// tests (tests/tok_diff.mjs). Everything comes from a seed and the text
// below; nothing is downloaded.
//
//   corpus(seed, bytes)       documents (strings) of varied text, >= bytes UTF-8 bytes in all
//   randomStrings(seed, n)    n random strings: {text} (code points) or {bytes} (raw, maybe invalid UTF-8)

export function rng(seed) {
  // xorshift128+ on two 32-bit halves, seeded by splitmix32
  let s = seed >>> 0;
  const split = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split(), b = split(), c = split(), d = split();
  const next = () => {
    // xoshiro128**
    const r = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = (b << 9) >>> 0;
    c ^= a; d ^= b; b ^= c; a ^= d; c ^= t; d = rotl(d, 11);
    return r;
  };
  const rotl = (x, k) => ((x << k) | (x >>> (32 - k))) >>> 0;
  const r = {
    u32: next,
    float: () => next() / 4294967296,
    int: (n) => Math.floor((next() / 4294967296) * n),
    pick: (arr) => arr[Math.floor((next() / 4294967296) * arr.length)],
    chance: (p) => next() / 4294967296 < p,
  };
  return r;
}

// ---- source text, written for these tests ----

const PROSE = [
  // English
  "The committee met on Tuesday to review the proposal. After three hours of discussion, they agreed that the budget wasn't enough, and they'd need another round of funding before the project could start.",
  "I can't believe it's already December! We've got so much to do: buy presents, clean the house, and finish the report that's due on the 15th.",
  "Dr. O'Neill's lecture covered the history of cryptography from Caesar ciphers to RSA-2048; students who'll take the exam should re-read chapters 3-7.",
  "SHE SAID \"NO\" TWICE. He asked why. She didn't answer, but THEY'RE leaving anyway, aren't they?",
  "In 1969, Apollo 11 landed on the Moon; 600 million people watched. The lander's computer had 2,048 words of RAM and ran at 1.024 MHz.",
  // German, French, Spanish, Italian, Portuguese, Dutch, Polish, Czech, Turkish, Vietnamese
  "Die Straßenbahn fährt um 7:45 Uhr ab. Könnten Sie mir bitte sagen, wo der nächste Fahrkartenautomat ist? Übermorgen ist Feiertag.",
  "L'été dernier, nous sommes allés à Montréal. C'était magnifique ; les gens étaient très accueillants et la cuisine, délicieuse !",
  "¿Dónde está la biblioteca? ¡Qué día tan bonito! El niño comió piña y jamón en el año 2023.",
  "Perché non andiamo al mare domani? L'acqua è già calda e c'è il sole tutto il giorno.",
  "A informação está disponível em português; não há razão para preocupação. Ação, coração, pão.",
  "Het is vandaag erg koud in Amsterdam, maar de grachten zijn prachtig. Zij fietsen naar het werk.",
  "Zażółć gęślą jaźń. Chrząszcz brzmi w trzcinie w Szczebrzeszynie.",
  "Příliš žluťoučký kůň úpěl ďábelské ódy. Dobrý den, jak se máte?",
  "İstanbul'da hava bugün çok güzel; ığdır, şişli, göğüs, öğretmen, üçüncü.",
  "Tiếng Việt có nhiều dấu: ă, â, đ, ê, ô, ơ, ư. Hôm nay trời đẹp quá! Người ta nói rằng học, học nữa, học mãi.",
  // Greek, Russian, Ukrainian, Armenian, Georgian
  "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο. Καλημέρα σας! Ευχαριστώ πολύ.",
  "Съешь же ещё этих мягких французских булок, да выпей чаю. Москва — столица России; население: 13 миллионов.",
  "Чуєш їх, доцю, га? Кумедна ж ти, прощайся без ґольфів! Київ, Львів, Одеса.",
  "Բարեւ ձեզ, ինչպե՞ս եք։ Հայաստանի մայրաքաղաքը Երեւանն է։",
  "გამარჯობა, როგორ ხარ? საქართველოს დედაქალაქი თბილისია.",
  // Arabic, Hebrew, Persian, Urdu
  "مرحبا بالعالم! كيف حالك اليوم؟ القاهرة هي عاصمة مصر، ويبلغ عدد سكانها ٢٠ مليون نسمة.",
  "שלום עולם! מה שלומך היום? ירושלים היא עיר עתיקה מאוד.",
  "سلام دنیا! امروز هوا خیلی خوب است. تهران پایتخت ایران است.",
  "یہ ایک مثال ہے۔ اردو زبان بہت خوبصورت ہے۔",
  // Indic, Thai, Lao, Khmer, Myanmar, Tibetan
  "नमस्ते दुनिया! आज मौसम बहुत अच्छा है। भारत की राजधानी नई दिल्ली है। क्षत्रिय, ज्ञान, श्री।",
  "আমি বাংলায় গান গাই। ঢাকা বাংলাদেশের রাজধানী।",
  "வணக்கம் உலகம்! தமிழ் ஒரு பழமையான மொழி.",
  "నమస్కారం ప్రపంచం! తెలుగు భాష చాలా మధురమైనది.",
  "ಕನ್ನಡ ಒಂದು ಸುಂದರ ಭಾಷೆ. ಬೆಂಗಳೂರು ಕರ್ನಾಟಕದ ರಾಜಧಾನಿ.",
  "ഇത് മലയാളം ആണ്. കേരളം ദൈവത്തിന്റെ സ്വന്തം നാട്.",
  "ਸਤਿ ਸ੍ਰੀ ਅਕਾਲ! ਪੰਜਾਬੀ ਬੋਲੀ।",
  "สวัสดีครับ วันนี้อากาศดีมาก กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
  "ສະບາຍດີ ປະເທດລາວ ວຽງຈັນ",
  "សួស្តី​ពិភពលោក! ភ្នំពេញ​គឺជា​រាជធានី​នៃ​ប្រទេស​កម្ពុជា។",
  "မင်္ဂလာပါ။ ရန်ကုန်မြို့။",
  "བཀྲ་ཤིས་བདེ་ལེགས། བོད་ཡིག",
  // CJK
  "我想在工作中使用这个工具。北京是中国的首都，人口超过两千万。今天天气很好，我们去公园散步吧！",
  "人工智能正在改变世界。自然语言处理、计算机视觉和机器学习是三个重要的领域。",
  "東京は日本の首都です。今日はとても暑いですね。ひらがな、カタカナ、漢字を使います。コンピューターでプログラムを書きます。",
  "すもももももももものうち。ラーメンを食べたい！ＡＢＣ１２３、全角文字。",
  "안녕하세요! 서울은 한국의 수도입니다. 오늘 날씨가 정말 좋네요. 한글은 세종대왕이 만들었습니다.",
  // others
  "Ẹ kú àárọ̀! Báwo ni? Yorùbá ní àwọn àmì ohùn.",
  "Habari ya asubuhi? Ninapenda kusoma vitabu vya Kiswahili.",
  "ᐊᐃᖓᐃ! ᐃᓄᒃᑎᑐᑦ ᑎᑎᕋᐅᓯᖅ.",
  "ሰላም ነው? አዲስ አበባ የኢትዮጵያ ዋና ከተማ ናት።",
  "Ꭳ ᏏᏲ! ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ.",
  "Ḁ ḁ Ḃ ḃ — Zalgo: Z̴̡̨͚̗͔̓a̷̡̗̿l̸͎̈́g̵̢̛o̴̖͝ ṫ̶̼e̷͚͑x̶̣̏t̵̰̍.",
];

const CODE = [
  `#include <stdio.h>\n\nint main(int argc, char **argv) {\n    for (int i = 0; i < argc; i++) {\n        printf("%d: %s\\n", i, argv[i]);\n    }\n    return 0;\n}\n`,
  `def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nif __name__ == "__main__":\n    print([fib(i) for i in range(20)])\n`,
  `const express = require('express');\nconst app = express();\napp.get('/api/users/:id', async (req, res) => {\n  const user = await db.users.findOne({ id: req.params.id });\n  res.json(user ?? { error: 'not found' });\n});\n`,
  `{\n  "name": "spud",\n  "version": "1.0.0",\n  "tags": ["llm", "gguf", "c11"],\n  "nested": {"a": [1, 2.5, -3e10, null, true]}\n}\n`,
  `<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>Test &amp; demo</title></head>\n<body>\n  <div class="container"><p>Hello, <b>world</b>!</p></div>\n</body>\n</html>\n`,
  `SELECT u.id, u.name, COUNT(o.id) AS orders\nFROM users u LEFT JOIN orders o ON o.user_id = u.id\nWHERE u.created_at >= '2024-01-01'\nGROUP BY u.id, u.name\nHAVING COUNT(o.id) > 5\nORDER BY orders DESC;\n`,
  `fn main() {\n    let v: Vec<u32> = (1..=10).map(|x| x * x).collect();\n    println!("{:?}", v);\n    let s = String::from("héllo");\n    match s.len() { 0 => {}, n => println!("{n}") }\n}\n`,
  `#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.txt; do\n  wc -l "$f" | awk '{print $1}' >> counts.log\ndone\necho "done: $(date +%F)"\n`,
  `\\begin{equation}\n  E = mc^2 \\quad \\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}\n\\end{equation}\n`,
  `diff --git a/src/x.c b/src/x.c\n@@ -1,3 +1,4 @@\n-int x = 1;\n+int x = 2;\n+int y = 3;\n`,
  `    \t\tindented with tabs and spaces\t\n\t\t\tmore\n        eight spaces\n`,
  `// C++ templates\ntemplate <typename T>\nstd::vector<T> filter(const std::vector<T>& v, std::function<bool(const T&)> f) {\n  std::vector<T> out; std::copy_if(v.begin(), v.end(), std::back_inserter(out), f); return out;\n}\n`,
];

const EMOJI = [
  "😀", "😂", "🥹", "❤️", "👍", "👍🏽", "👨‍👩‍👧‍👦", "👩🏾‍💻", "🏳️‍🌈", "🏴‍☠️", "🇺🇸", "🇯🇵", "🇩🇪", "🧑‍🤝‍🧑",
  "🫠", "🦙", "🚀", "✅", "☕", "⚠️", "🤷‍♀️", "🙇🏻‍♂️", "👁️‍🗨️", "🐻‍❄️", "#️⃣", "1️⃣", "©️", "™", "∞",
];

const SPECIAL_LIKE = [
  "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>", "<s>", "</s>", "<unk>",
  "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<|start|>", "<|message|>", "<|channel|>", "<|end|>",
  "<｜begin▁of▁sentence｜>", "<｜User｜>", "<|fim_prefix|>", "<tool_call>", "<think>", "</think>", "[INST]", "<|",
  "|>", "<|im_", "<pad>", "<mask>", "<unused0>", "\n\n\n", "\t\t",
];

const WS = [" ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\n\n", " \n ", "\u00a0", "\u3000", "\u2003", "\u200b",
  "\f", "\v", "                                ", "\n\n\n\n", "\t \t"];

// ---- corpus ----

function mutate(r, s) {
  switch (r.int(8)) {
    case 0: return s.toUpperCase();
    case 1: return s.toLowerCase();
    case 2: return s.replace(/ /g, () => r.pick(WS));
    case 3: return s.split(" ").reverse().join(" ");
    case 4: { // drop the first letters of words
      return s.split(" ").map((w) => (r.chance(0.3) ? w.slice(1) : w)).join(" ");
    }
    default: return s;
  }
}

function numbers(r) {
  const k = r.int(6);
  if (k === 0) return String(r.u32());
  if (k === 1) return String(r.u32()) + String(r.u32()) + String(r.u32()); // long digit run
  if (k === 2) return (r.float() * 1e6).toFixed(r.int(8));
  if (k === 3) return `${r.int(10000)}-${String(r.int(13)).padStart(2, "0")}-${String(r.int(32)).padStart(2, "0")}`;
  if (k === 4) return "0x" + r.u32().toString(16) + r.u32().toString(16);
  return "1".repeat(1 + r.int(60));
}

function piece(r) {
  const k = r.int(20);
  if (k < 8) return mutate(r, r.pick(PROSE));
  if (k < 11) return r.pick(CODE);
  if (k < 12) return Array.from({ length: 1 + r.int(12) }, () => r.pick(EMOJI)).join(r.chance(0.5) ? "" : " ");
  if (k < 13) return numbers(r);
  if (k < 14) return r.pick(WS).repeat(1 + r.int(r.chance(0.1) ? 300 : 8));
  if (k < 15) return r.pick(SPECIAL_LIKE);
  if (k < 16) { // words of several scripts glued together
    const words = r.pick(PROSE).split(" ").concat(r.pick(PROSE).split(" "));
    let out = "";
    for (let i = 0; i < 10; i++) out += r.pick(words) + (r.chance(0.3) ? "" : r.pick([" ", "", "-", "'", "_", ".", "/"]));
    return out;
  }
  if (k < 17) { // contractions and apostrophes
    return r.pick(["I'm", "you're", "it's", "we'll", "they'd", "she's", "don't", "WON'T", "Y'ALL'D", "o'clock",
      "rock 'n' roll", "'tis", "''", "'''s", "'S'T'RE", "ma'am", "l'homme", "aujourd'hui"]) + r.pick([" ", ".", "", "\n"]);
  }
  if (k < 18) { // punctuation runs and symbols
    return r.pick(["...", "!!!", "?!", "---", "***", "~~~", "===", "<<>>", "()", "[]{}", "«»", "„“", "‘’", "–—", "…",
      "§¶", "€£¥₹₿", "½¼¾", "→⇒⟶", "∀∃∑∏√", "°C", "™®©", "//", "/*", "*/", "->", "=>", "::", "&&", "||", "@@", "##"])
      .repeat(1 + r.int(4));
  }
  if (k < 19) { // mixed newlines
    return Array.from({ length: 1 + r.int(6) }, () => r.pick(["line", "x", " ", "", "word word"]) + r.pick(["\n", "\r\n", "\r", "\n\r", "\n\n"])).join("");
  }
  // accented text in decomposed form (NFD), which NFC normalizers compose
  return mutate(r, r.pick(PROSE)).normalize("NFD");
}

function plainPiece(r) {
  const k = r.int(10);
  if (k < 7) return mutate(r, r.pick(PROSE)).replace(/ {2,}/g, " ");
  if (k < 9) return r.pick(CODE);
  return numbers(r).slice(0, 12);
}

// plain: only prose, code and short numbers (no long runs, no special-token
// look-alikes): text as most documents are, for benchmarks.
export function corpus(seed, bytes, { plain = false } = {}) {
  const r = rng(seed);
  const enc = new TextEncoder();
  const docs = [];
  let total = 0;
  while (total < bytes) {
    let doc = "";
    const target = 100 + r.int(r.chance(0.1) ? 16000 : 3000);
    while (enc.encode(doc).length < target) doc += (plain ? plainPiece(r) : piece(r)) + r.pick(["", " ", "\n", "\n\n", ". ", " "]);
    docs.push(doc);
    total += enc.encode(doc).length;
  }
  return docs;
}

// ---- random strings ----

const INTERESTING = [
  0x20, 0x09, 0x0a, 0x0d, 0x0b, 0x0c, 0xa0, 0x1680, 0x2000, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
  0x180e, 0x200b, 0x200c, 0x200d, 0x2060, 0x0027, 0x2019, 0x0301, 0x0308, 0x0323, 0x034f, 0x20dd, 0xfe0f, 0xfe0e,
  0x1f3fb, 0x1f9d1, 0xe0067, 0xe007f, 0x2581, 0xfffd, 0xffff, 0xfffe, 0x10ffff, 0xe000, 0xf8ff, 0x00ad, 0x0300,
  0x1100, 0x1161, 0x11a8, 0xac00, 0xd7a3, 0x0e33, 0x0e4d, 0x0f00, 0x0f71, 0x0f72, 0x1d165, 0x1d16e, 0x10d40,
  0x017f, 0x00df, 0x1e9e, 0x0130, 0x0131, 0x212a, 0x2126, 0x01c5, 0x02b0, 0x3005, 0x3031, 0x309d, 0x30fc, 0xff9e, 0x0660,
  0x06f0, 0x0966, 0x2160, 0x2460, 0x00b2, 0x00bd, 0x3007, 0x4e00, 0x9fa5, 0x9fa6, 0x3040, 0x30ff, 0x3400, 0x20000,
  0x0041, 0x005a, 0x0061, 0x007a, 0x0030, 0x0039, 0x0021, 0x002f, 0x003a, 0x0040, 0x005b, 0x0060, 0x007b, 0x007e,
];

function randomCodePoint(r) {
  const k = r.int(100);
  if (k < 30) { // ASCII, weighted to letters, digits, space, apostrophe, newlines
    const t = r.int(10);
    if (t < 4) return 0x61 + r.int(26) - (r.chance(0.3) ? 32 : 0);
    if (t < 5) return 0x30 + r.int(10);
    if (t < 7) return r.pick([0x20, 0x20, 0x27, 0x0a, 0x0d, 0x09, 0x2e, 0x2c]);
    return r.int(128);
  }
  if (k < 50) return r.pick(INTERESTING);
  if (k < 60) return 0x80 + r.int(0x2f80); // Latin .. CJK symbols
  if (k < 75) { // anywhere in the BMP but the surrogates
    let c;
    do c = r.int(0x10000); while (c >= 0xd800 && c <= 0xdfff);
    return c;
  }
  if (k < 85) return 0x10000 + r.int(0x20000); // supplementary: emoji, historic scripts, CJK ext
  let c; // anything
  do c = r.int(0x110000); while (c >= 0xd800 && c <= 0xdfff);
  return c;
}

export function randomStrings(seed, n, { exclude = new Set() } = {}) {
  const r = rng(seed);
  const out = [];
  while (out.length < n) {
    if (r.chance(0.08)) { // raw bytes, often not UTF-8
      const len = 1 + r.int(24);
      const b = new Uint8Array(len);
      for (let i = 0; i < len; i++) {
        const t = r.int(4);
        b[i] = t === 0 ? 0x80 + r.int(0x40) : t === 1 ? 0xc0 + r.int(0x40) : t === 2 ? r.int(0x80) : r.int(256);
      }
      out.push({ bytes: b });
      continue;
    }
    const len = 1 + r.int(r.chance(0.1) ? 200 : 24);
    let s = "";
    for (let i = 0; i < len; i++) {
      let c = randomCodePoint(r);
      if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
      if (c > 0x10ffff) c %= 0x110000;
      if (exclude.has(c)) continue;
      s += String.fromCodePoint(c);
      if (r.chance(0.05)) s += r.pick(["'s", "'S", "'ll", "'Re", "'d", " 's", "  ", "\r\n", "123", "1234567"]);
    }
    if (s.length) out.push({ text: s });
  }
  return out;
}
