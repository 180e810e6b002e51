"""Chat templates for the server tests, independent of spud.

  gguf_template.py set MODEL OUT TEMPLATE   copy MODEL with tokenizer.chat_template from file TEMPLATE
  gguf_template.py drop MODEL OUT           copy MODEL without a chat template
  gguf_template.py render MODEL             read {"messages", "tools"?, "add_generation_prompt"?} on
                                            stdin, print the prompt

render does what Hugging Face's apply_chat_template does (jinja2's ImmutableSandboxedEnvironment,
trim_blocks, lstrip_blocks, loopcontrols, tojson as json.dumps(ensure_ascii=False), raise_exception,
bos_token / eos_token from the vocabulary) after the request normalisation spud serve documents:
"developer" -> "system", text parts joined into one string, null content -> "", tool call arguments
parsed from their JSON string.
"""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from gguf_edit import Gguf  # noqa: E402


def kv(g, key):
    for k, t, raw in g.kvs:
        if k == key:
            return t, raw
    return None, None


def token_text(g, id_key):
    t, raw = kv(g, id_key)
    if t is None:
        return ''
    tid, = struct.unpack('<I', raw[:4])
    t, raw = kv(g, 'tokenizer.ggml.tokens')
    _, n = struct.unpack_from('<IQ', raw, 0)
    p = 12
    for i in range(n):
        ln, = struct.unpack_from('<Q', raw, p)
        if i == tid:
            return raw[p + 8:p + 8 + ln].decode()
        p += 8 + ln
    return ''


def normalize(messages):
    out = []
    for m in messages:
        n = dict(m)
        if n.get('role') == 'developer':
            n['role'] = 'system'
        c = n.get('content')
        if isinstance(c, list):
            n['content'] = ''.join(p.get('text', p.get('refusal', '')) for p in c)
        elif c is None:
            n['content'] = ''
        if isinstance(n.get('tool_calls'), list):
            calls = []
            for call in n['tool_calls']:
                call = json.loads(json.dumps(call))
                fn = call.get('function') or {}
                if isinstance(fn.get('arguments'), str):
                    try:
                        a = json.loads(fn['arguments'])
                        if isinstance(a, dict):
                            fn['arguments'] = a
                    except ValueError:
                        pass
                calls.append(call)
            n['tool_calls'] = calls
        out.append(n)
    return out


def render(model):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    g = Gguf(model)
    t, raw = kv(g, 'tokenizer.chat_template')
    src = raw[8:].decode()
    req = json.load(sys.stdin)

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=['jinja2.ext.loopcontrols'])
    env.filters['tojson'] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals['raise_exception'] = raise_exception
    args = dict(messages=normalize(req['messages']), add_generation_prompt=req.get('add_generation_prompt', True),
                bos_token=token_text(g, 'tokenizer.ggml.bos_token_id'),
                eos_token=token_text(g, 'tokenizer.ggml.eos_token_id'))
    if req.get('tools') is not None:
        args['tools'] = req['tools']
    sys.stdout.write(env.from_string(src).render(**args))


def main():
    cmd = sys.argv[1]
    if cmd == 'render':
        render(sys.argv[2])
        return
    g = Gguf(sys.argv[2])
    if cmd == 'set':
        g.set_str('tokenizer.chat_template', open(sys.argv[4], encoding='utf-8').read())
    elif cmd == 'drop':
        g.kvs = [k for k in g.kvs if k[0] != 'tokenizer.chat_template']
    g.write(sys.argv[3])


if __name__ == '__main__':
    main()
