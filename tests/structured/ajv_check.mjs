// ajv_check.mjs: the independent validator of spud's constrained outputs: ajv (JSON Schema 2020-12) with the
// formats spud supports, and a parser of tool calls in each model family's syntax. Shares no code with spud.
//
// Formats follow RFC 3339 / ajv-formats' "full" mode (dates checked against the days of the month, times
// with a required offset); email and uuid use ajv-formats' regular expressions.
import Ajv2020Module from "ajv/dist/2020.js";

const Ajv2020 = Ajv2020Module.default ?? Ajv2020Module;

export function newAjv() {
  const ajv = new Ajv2020({ strict: true, strictTypes: false, strictTuples: false, strictRequired: false, allErrors: true });
  const DAYS = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
  const leap = (y) => y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0);
  const date = (s) => {
    const m = /^(\d\d\d\d)-(\d\d)-(\d\d)$/.exec(s);
    if (!m) return false;
    const y = +m[1], mo = +m[2], d = +m[3];
    return mo >= 1 && mo <= 12 && d >= 1 && d <= (mo === 2 && leap(y) ? 29 : DAYS[mo]);
  };
  const time = (s) => {
    const m = /^(\d\d):(\d\d):(\d\d)(\.\d+)?(z|([+-])(\d\d):(\d\d))$/i.exec(s);
    if (!m) return false;
    const h = +m[1], mi = +m[2], se = +m[3];
    if (m[6] && (+m[7] > 23 || +m[8] > 59)) return false;
    return h <= 23 && mi <= 59 && se <= 59;
  };
  ajv.addFormat("date", { type: "string", validate: date });
  ajv.addFormat("time", { type: "string", validate: time });
  ajv.addFormat("date-time", { type: "string", validate: (s) => { const p = s.split(/[tT ]/); return p.length === 2 && date(p[0]) && time(p[1]); } });
  ajv.addFormat("uuid", /^(?:urn:uuid:)?[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}$/i);
  ajv.addFormat("email", /^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/i);
  return ajv;
}

// Tool calls of one output, in the format's syntax: [{name, args}] or an error string.
export function parseCalls(text, format) {
  text = text.replace(/\n$/, "");
  const calls = [];
  const take = (obj, key) => {
    if (typeof obj !== "object" || obj === null || Array.isArray(obj)) throw new Error("a call is not an object");
    const keys = Object.keys(obj).sort().join(",");
    if (keys !== ["name", key].sort().join(",")) throw new Error(`call keys are ${keys}`);
    calls.push({ name: obj.name, args: obj[key] });
  };
  if (format === "hermes") {
    const re = /^\s*<tool_call>([\s\S]*?)<\/tool_call>/;
    let rest = text;
    while (rest.trim()) {
      const m = re.exec(rest);
      if (!m) throw new Error("not a <tool_call>...</tool_call> sequence");
      take(JSON.parse(m[1]), "arguments");
      rest = rest.slice(m[0].length);
    }
  } else if (format === "llama3") {
    take(JSON.parse(text), "parameters");
  } else if (format === "mistral") {
    if (!text.startsWith("[TOOL_CALLS]")) throw new Error("no [TOOL_CALLS] prefix");
    const arr = JSON.parse(text.slice("[TOOL_CALLS]".length));
    if (!Array.isArray(arr) || !arr.length) throw new Error("[TOOL_CALLS] is not followed by a non-empty array");
    for (const c of arr) take(c, "arguments");
  }
  if (!calls.length) throw new Error("no call");
  return calls;
}
