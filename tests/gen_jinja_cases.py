#!/usr/bin/env python3
"""Render the language cases below with Python's jinja2 (set up as Hugging
Face's apply_chat_template does) and write tests/jinja_cases.h, the expected
outputs that tests/test_jinja.c checks spud's interpreter against.

Run after changing CASES:  /usr/bin/python3 tests/gen_jinja_cases.py
"""
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_templates import make_env  # noqa: E402

V = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi <b>&\"'"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1, "y": [1.5, "é"]}}}]},
        {"role": "tool", "content": "42"},
    ],
    "n": 3, "f": 2.5, "s": "  Hello World  ", "e": "", "z": None, "t": True,
    "d": {"b": 2, "a": 1, "items": "KEY", "c": {"x": [1, 2]}},
    "l": [3, 1, 2], "words": ["b", "A", "c", "a"], "u": "ÉtÉ ß 日本",
}

CASES = [
    # text, whitespace control, trim_blocks / lstrip_blocks, comments, raw, newlines
    "plain text",
    "a\n{% if true %}\nb\n{% endif %}\nc",
    "  {% if true %}x{% endif %}  \n  {%- if true %} y {%- endif %}  z",
    "{% for i in l %}\n  {{ i }}\n{% endfor %}",
    "{{ 1 }}  {{- 2 -}}  \n {{ 3 }}",
    "a {# comment #} b\n  {# c2 #}\nc {#- c3 -#}  d",
    "{% raw %}{{ not }}{% endraw %}|  {%- raw -%}  x {{ y }}  {%- endraw %}|",
    "line1\r\nline2\r{% if true %}\r\nx{% endif %}\r\n",
    "trailing newline\n",
    "two trailing\n\n",
    "  {%+ if true %}keep{% endif %}",
    "{% if true +%}\nkeep nl{% endif %}",
    "x {{- '  y  ' -}} z",
    "{%- set a = 1 -%}\n\n  {{ a }}\n",
    "\t{% if true %}\ttab{% endif %}",
    # output of values
    "{{ none }}|{{ true }}|{{ false }}|{{ 1 }}|{{ -2 }}|{{ 1.0 }}|{{ 2.50 }}|{{ 1e20 }}|{{ 1e-5 }}|{{ 0.1 + 0.2 }}|{{ 10 / 4 }}|{{ 10 // 4 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 2 ** 10 }}|{{ 7.5 % 2 }}",
    "{{ [1, 'a', none, true, 1.5, [2], {'k': 'v'}] }}|{{ (1,) }}|{{ (1, 2) }}|{{ {} }}|{{ [] }}",
    "{{ \"it's\" }}|{{ ['it\\'s', \"q\\\"q\", 'a\\nb', 'é', '\\x01'] }}",
    "{{ z }}|{{ undefined_var }}|{{ d.missing }}|{{ l[10] }}|{{ s.nope }}",
    "{{ 'a' ~ 1 ~ none ~ undefined_var ~ [1] }}",
    "{{ 'ab' * 3 }}|{{ [1] * 2 }}|{{ 3 * 'x' }}|{{ 'a' + 'b' }}|{{ [1] + [2] }}|{{ 1 + 2.5 }}|{{ true + 1 }}",
    "{{ 1, 2 }}|{{ (1, 'a')[1] }}",
    "{{ 'abc' 'def' }}",
    "{{ 0x1F }} {{ 0o17 }} {{ 0b101 }} {{ 1_000 }} {{ 1.5e3 }} {{ 1E2 }}",
    # comparisons, logic
    "{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1,2] < [1,3] }} {{ none == none }} {{ 1 != 2 }}",
    "{{ 'a' in 'cat' }} {{ 2 in l }} {{ 'b' in d }} {{ 'x' not in d }} {{ 1 in [] }} {{ 'x' in undefined_var }}",
    "{{ 0 or 'x' }}|{{ 1 and 'y' }}|{{ '' and 1 }}|{{ not none }}|{{ none or [] }}|{{ not (1 and 0) }}",
    "{{ 'yes' if t else 'no' }}|{{ 'yes' if z else 'no' }}|{{ 'x' if false }}|",
    "{{ -n }} {{ +f }} {{ - -1 }} {{ -l|length }}",
    # loops
    "{% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}",
    "{% for x in [] %}a{% else %}empty{% endfor %}|{% for x in undefined_var %}a{% else %}u{% endfor %}",
    "{% for x in l if x > 1 %}{{ x }}{{ loop.length }}{{ loop.last }},{% endfor %}",
    "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}",
    "{% for k in d %}{{ k }}{% endfor %}|{% for c in 'héllo' %}[{{ c }}]{% endfor %}",
    "{% for a in [1,2] %}{% for b in 'xy' %}{{ loop.depth }}{{ a }}{{ b }}{% endfor %}{{ loop.depth }}{% endfor %}",
    "{% for x in l %}{{ loop.cycle('o', 'e') }}{{ loop.previtem }}{{ loop.nextitem }},{% endfor %}",
    "{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}",
    "{% for m in messages %}{{ m.role }}{% if not loop.last %}, {% endif %}{% endfor %}",
    "{% for i in range(3) %}{% set outer = loop %}{% for j in range(2) %}{{ outer.index }}{{ loop.index }} {% endfor %}{% endfor %}",
    "{{ range(5) | list }} {{ range(1, 10, 3) | list }} {{ range(5, 0, -2) | list }}",
    # scoping
    "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }}",
    "{% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }}",
    "{% for i in [1] %}{% set inner = 5 %}{% endfor %}{{ inner }}",
    "{% set ns = namespace(c=0, items=[]) %}{% for i in l %}{% set ns.c = ns.c + i %}{% set ns.items = ns.items + [i] %}{% endfor %}{{ ns.c }} {{ ns.items }}",
    "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c = 3, 4 %}{{ c }}",
    "{% set blk %}  inner {{ n }}  {% endset %}[{{ blk }}]{% set b2 | upper | trim %} x {% endset %}[{{ b2 }}]",
    "{% with a = 5, b = n %}{{ a + b }}{% endwith %}{{ a }}",
    "{% set x = 1 %}{% macro m() %}{{ x }}{% endmacro %}{% set x = 2 %}{{ m() }}",
    "{% set add_generation_prompt = 'shadow' %}{{ add_generation_prompt }}",
    # macros
    "{% macro g(name, greeting='Hello', punct='!') %}{{ greeting }}, {{ name }}{{ punct }}{% endmacro %}{{ g('Bob') }}|{{ g('Al', punct='?') }}|{{ g(greeting='Yo', name='Z') }}",
    "{% macro v() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ v(1, 2, a=3) }}",
    "{% macro w(a) %}[{{ a }}]{% endmacro %}{{ w() }}|{{ w(none) }}",
    "{% macro wrap() %}<{{ caller() }}>{% endmacro %}{% call wrap() %}body {{ n }}{% endcall %}",
    "{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}{% call(item) each([1, 2]) %}({{ item }}){% endcall %}",
    "{% macro fact(k) %}{% if k <= 1 %}1{% else %}{{ k }}*{{ fact(k - 1) }}{% endif %}{% endmacro %}{{ fact(4) }}",
    "{% macro m(x) %}  {{ x }}  {% endmacro %}[{{ m(1) }}]{{ m(2) | trim }}",
    # filters
    "{{ s|trim }}|{{ s|trim('H ') }}|{{ s|length }}|{{ l|length }}|{{ d|length }}|{{ undefined_var|length }}|{{ u|length }}",
    "{{ undefined_var|default('dflt') }}|{{ z|default('dflt') }}|{{ e|default('dflt', true) }}|{{ z|d('x', boolean=true) }}",
    "{{ d|items|list }}|{{ d|dictsort }}|{{ d|dictsort(by='value', reverse=true)|map(attribute=0)|list }}" .replace("d|dictsort(by='value', reverse=true)", "{'x': 2, 'y': 1}|dictsort(by='value', reverse=true)"),
    "{{ l|join(', ') }}|{{ words|join }}|{{ [1, none, 'a']|join('-') }}|{{ messages|join(',', attribute='role') }}",
    "{{ s|replace('l', 'L') }}|{{ s|replace('l', 'L', 2) }}|{{ 'aaa'|replace('', '-') }}",
    "{{ messages|selectattr('role', 'equalto', 'user')|list|length }}|{{ messages|rejectattr('content')|map(attribute='role')|join(',') }}|{{ messages|selectattr('tool_calls', 'defined')|list|length }}",
    "{{ messages|map(attribute='role')|list }}|{{ l|map('string')|join }}|{{ messages|map(attribute='nope', default='D')|join }}|{{ ['a','b']|map('upper')|list }}",
    "{{ l|first }}|{{ l|last }}|{{ 'abc'|first }}|{{ []|first }}|{{ l|min }}|{{ l|max }}|{{ words|min }}|{{ words|max }}|{{ l|sum }}",
    "{{ s|upper }}|{{ s|lower }}|{{ 'hello world'|title }}|{{ 'hELLO'|capitalize }}|{{ u|upper }}|{{ u|lower }}",
    "{{ n|string }}|{{ z|string }}|{{ '42'|int + 1 }}|{{ '4.7'|int }}|{{ 'x'|int(7) }}|{{ 3.9|int }}|{{ '0x1f'|int(base=16) }}|{{ '2.5'|float }}|{{ 'x'|float }}",
    "{{ 'ab'|list }}|{{ d|list }}|{{ none|default([])|list }}|{{ l|sort }}|{{ words|sort }}|{{ words|sort(case_sensitive=true) }}|{{ l|sort(reverse=true) }}",
    "{{ messages|sort(attribute='role')|map(attribute='role')|join(',') }}|{{ words|unique|list }}|{{ [1, 1, 2]|unique|list }}",
    "{{ l|reverse|list }}|{{ 'abc'|reverse }}|{{ -3|abs }}|{{ 2.567|round(2) }}|{{ 2.5|round }}|{{ 3|round }}|{{ 2.1|round(method='ceil') }}",
    "{{ 'a\nb\n\nc'|indent }}|{{ 'a\nb'|indent(2, true) }}|{{ 'a\n\nb'|indent('> ', blank=true) }}",
    "{{ '<a>'|safe }}|{{ '<a>'|e }}|{{ ('<x>'|safe) + '<y>' }}|{{ '<y>' + ('<x>'|safe) }}|{{ ('a'|safe) ~ '<' }}",
    "{{ d|tojson }}|{{ messages[2]|tojson }}|{{ [1, 'é', none, true, 1.0, 'a\"b\\\\c\\n']|tojson }}",
    "{{ d.c|tojson(indent=2) }}|{{ {}|tojson(indent=2) }}|{{ [[]]|tojson(indent=1) }}|{{ {'b': 1, 'a': [1]}|tojson(sort_keys=true) }}|{{ 'é'|tojson(ensure_ascii=true) }}",
    "{{ {'a': 1}|tojson(separators=(',', ':')) }}|{{ {1: 'x', none: 2, true: 3}|tojson }}|{{ 1e100|tojson }}|{{ (1, 2)|tojson }}",
    "{{ d|attr('b') }}|{{ 'a-b-c'|wordcount }}|{{ '%s is %d'|format('x', 3) }}|{{ '%s' % 'y' }}|{{ '%(a)s!' % {'a': 1} }}",
    "{{ l|select('odd')|list }}|{{ l|reject('odd')|list }}|{{ [0, 1, '', 'a']|select|list }}|{{ l|select('greaterthan', 1)|list }}",
    "{{ '!=lo ,orld x-y(z [a {b <c'|title }}|{{ 'hello WORLD'.title() }}|{{ 'ß'|title }}",
    "{{ 'hello'.find('l', 3) }}{{ 'hello'.find('l', -2) }}{{ 'hello'.rfind('l', 0, 3) }}{{ 'hello'.count('l', 3) }}{{ 'hello'.find('', 9) }}{{ 'hello'.startswith('ll', 2) }}{{ 'hello'.endswith('l', 0, 4) }}{{ 'héllo'.find('l', 2) }}",
    "{% set j = joiner(' | ') %}{% for x in l %}{{ j() }}{{ x }}{% endfor %}",
    "{{ []|map()|list }}|{{ none|select('nosuchtest')|list }}|{{ ''|map('nosuchfilter')|list }}",
    "{{ (5|items) is defined }}|{{ (none|unique) is defined }}|{{ 0[::-1] }}|{{ not (-3)[::-1] }}|{{ [1, 2, 3]|batch(2)|list }}|{{ 'ab'|center(6) }}|",
    # tests
    "{{ n is defined }}{{ undefined_var is defined }}{{ undefined_var is undefined }}{{ z is none }}{{ n is number }}{{ f is float }}{{ n is integer }}{{ t is boolean }}{{ s is string }}{{ d is mapping }}{{ l is iterable }}{{ s is iterable }}{{ n is iterable }}",
    "{{ l is sequence }}{{ d is sequence }}{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 1 is in l }}{{ 'x' is lower }}{{ 'X' is upper }}{{ t is true }}{{ z is false }}{{ n is eq 3 }}{{ n is gt 2 }}{{ n is lt 2 }}{{ n is not none }}{{ undefined_var is iterable }}",
    "{{ 1 is sameas 1 }}{{ none is sameas none }}{{ true is sameas 1 }}{{ 'upper' is filter }}{{ 'odd' is test }}{{ g is callable }}{{ range is callable }}",
    # string and dict methods
    "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxaxx'.strip('x') }}|{{ s.upper() }}|{{ s.lower() }}|{{ 'a b'.title() }}",
    "{{ 'a,b,,c'.split(',') }}|{{ '  a  b c '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'a b c'.rsplit(' ', 1) }}|{{ '  a b  c  '.split(none, 1) }}|{{ 'a\nb\r\nc'.splitlines() }}",
    "{{ s.startswith('  He') }}{{ s.endswith('d  ') }}{{ 'abc'.startswith(('x', 'a')) }}|{{ 'hello'.find('l') }}{{ 'hello'.rfind('l') }}{{ 'hello'.count('l') }}|{{ 'hello'.replace('l', 'L') }}|{{ '-'.join(['a', 'b']) }}",
    "{{ d.get('a') }}|{{ d.get('zz') }}|{{ d.get('zz', 'def') }}|{{ d.keys()|list }}|{{ d.values()|list|length }}|{{ d.items()|list|first }}|{{ d.items is defined }}|{{ d['items'] }}",
    "{{ d.keys() }}|{{ d.items()|length }}|{{ {'a': 1}.items() }}|{{ 'abc'.upper is callable }}|{{ d.values() }}",
    "{{ '123'.isdigit() }}{{ 'ab'.isalpha() }}{{ ' '.isspace() }}{{ 'AB'.isupper() }}{{ 'ab'.islower() }}|{{ 'prefix_x'.removeprefix('prefix_') }}",
    # subscripts and slices
    "{{ l[0] }}{{ l[-1] }}{{ l[1:] }}{{ l[:-1] }}{{ l[::-1] }}{{ l[::2] }}{{ 'héllo'[1:3] }}{{ 'abc'[-1] }}{{ messages[1:3]|length }}{{ l[5:] }}{{ l[-10:2] }}",
    "{{ d['c']['x'][1] }}{{ d.c.x.0 }}{{ messages[0]['role'] }}{{ messages[0].role }}{{ d['b'] + d.a }}",
    "{{ messages[-1].content }}|{{ (messages|last).role }}|{{ messages[2].tool_calls[0].function.arguments.y[1] }}",
    # literals
    "{{ {'a': 1, 'b': [1, 2], 3: 'x'} }}|{{ {'a': 1, 'a': 2} }}|{{ [1, 2, ] }}|{{ {'k': 'v',} }}",
    "{{ true }}{{ True }}{{ none }}{{ None }}{{ false }}{{ False }}",
    # strftime_now (SOURCE_DATE_EPOCH fixed by the generator and the test)
    "{{ strftime_now('%Y-%m-%d %d %b %Y') }}",
    # Unicode
    "{{ u[0] }}{{ u|length }}{{ u[-2:] }}{{ u|reverse }}{{ '日本'|list }}",
    # errors: jinja2 raises, spud must fail
    "{{ raise_exception('custom error') }}",
    "{{ undefined_var.attr }}",
    "{{ undefined_var['x'] }}",
    "{{ undefined_var() }}",
    "{{ 1 + 'a' }}",
    "{{ 'a' + none }}",
    "{{ undefined_var + 1 }}",
    "{{ 1 / 0 }}",
    "{{ 1 // 0 }}",
    "{{ n|nosuchfilter }}",
    "{% if false %}{{ n|nosuchfilter }}{% endif %}ok",
    "{% if true %}{{ n|nosuchfilter }}{% endif %}",
    "{{ n is nosuchtest }}",
    "{% for %}",
    "{% if x %}",
    "{% endif %}",
    "{{ 1 + }}",
    "{{ x",
    "{% set %}",
    "{% break %}",
    "{% macro m(a=1, b) %}{% endmacro %}",
    "{{ messages.append(1) }}",
    "{{ range(200000)|length }}",
    "{{ 5|items|list }}",
    "{{ 1 < 'a' }}",
    "{{ undefined_var < 1 }}",
    "{{ undefined_var|tojson }}",
    "{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}",
    "{% macro m(a) %}{% endmacro %}{{ m(b=2) }}",
    "{{ 'x' in 1 }}",
    "{{ 1 in 'abc' }}",
    "{% set x.y = 1 %}",
    "{% for a, b in [1, 2] %}{% endfor %}",
    "{{ {[1]: 2} }}",
    "{{ 'abc'.split('') }}",
    "{{ 'a'|int(base=99) }}",
    "{# unclosed comment",
    "{% raw %}unclosed raw",
    "{{ (1 }}",
    "{{ n.a.b }}",
    "{{ undefined_var|int }}",
    "{{ undefined_var|float }}",
    "{{ 2.5|round(undefined_var) }}",
    "{{ 'a' % 'x' }}",
    "{{ n is callable 1 }}",
    "{{ n is eq }}",
    "{{ l|select('nosuchtest')|list }}",
    "{{ 5|items|list }}",
    "{% set x = true[::-1] %}",
    "{{ n[1:] }}",
    "{{ d[1:] }}",
    "{{ l|indent }}",
]


def c_str(b):
    out = []
    for ch in b:
        if ch in (0x22, 0x5C):
            out.append("\\" + chr(ch))
        elif ch == 0x0A:
            out.append("\\n")
        elif 0x20 <= ch < 0x7F and ch != 0x3F:  # '?' escaped: no trigraphs
            out.append(chr(ch))
        else:
            out.append("\\%03o" % ch)
    return '"' + "".join(out) + '"'


def main():
    os.environ["SOURCE_DATE_EPOCH"] = "1721001600"
    env = make_env()
    rows = []
    for src in CASES:
        try:
            out = env.from_string(src).render(**copy.deepcopy(V), add_generation_prompt=True)  # indent extends lists in place
            rows.append((src, out.encode("utf-8"), True))
        except Exception as e:  # noqa: BLE001
            rows.append((src, ("%s: %s" % (type(e).__name__, e)).encode("utf-8"), False))
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "jinja_cases.h"), "w") as f:
        f.write("/* jinja_cases.h: generated by tests/gen_jinja_cases.py from Python's jinja2 %s; do not edit. */\n"
                % __import__("jinja2").__version__)
        f.write("static const char jinja_vars[] = %s;\n" % c_str(json.dumps(V, ensure_ascii=False).encode()))
        f.write("static const struct { const char *src; const char *want; int ok; } jinja_cases[] = {\n")
        for src, out, ok in rows:
            f.write("    {%s,\n     %s, %d},\n" % (c_str(src.encode()), c_str(out), ok))
        f.write("};\n")
    print("%d cases, %d raise" % (len(rows), sum(1 for r in rows if not r[2])))


if __name__ == "__main__":
    main()
