#!/usr/bin/env python3
"""Differential check of spud's Jinja interpreter against Python's jinja2 on
arbitrary templates, such as a fuzzing corpus (a developer tool, not a CTest
test: most fuzz inputs are garbage, and some differences are known and accepted).

    /usr/bin/python3 tests/jinja_diff.py SPUD DIR [--show N]

Each file in DIR (up to its first NUL byte) is rendered by `spud template` and
by jinja2 set up as tests/check_templates.py sets it up, with the messages and
tools of tests/data/conversations/tool_calls_string_args.json. Prints counts of
identical / both-failed / different and the first differences. Known accepted
differences: integers beyond 64 bits, the repr of objects that prints an
address (generators, bound methods), range objects printed as lists, output
over spud's bounds.
"""
import copy
import json
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_templates import make_env  # noqa: E402


class Timeout(Exception):
    pass


def on_alarm(sig, frame):
    raise Timeout()


def main():
    spud, d = sys.argv[1], sys.argv[2]
    show = int(sys.argv[sys.argv.index("--show") + 1]) if "--show" in sys.argv else 20
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1721001600")
    here = os.path.dirname(os.path.abspath(__file__))
    conv_path = os.path.join(here, "data", "conversations", "tool_calls_string_args.json")
    conv = json.load(open(conv_path, encoding="utf-8"))
    env = make_env()
    signal.signal(signal.SIGALRM, on_alarm)
    same = both_fail = skipped = 0
    diffs = []
    for name in sorted(os.listdir(d)):
        path = os.path.join(d, name)
        data = open(path, "rb").read().split(b"\0")[0]
        try:
            src = data.decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        try:
            signal.alarm(5)
            try:
                c = copy.deepcopy(conv)  # jinja2's indent filter extends a list in place
                want = env.from_string(src).render(messages=c["messages"], tools=c["tools"],
                                                   add_generation_prompt=True, bos_token="<s>",
                                                   eos_token="</s>").encode("utf-8")
                ok = True
            finally:
                signal.alarm(0)
        except (Timeout, RecursionError, MemoryError):
            skipped += 1
            continue
        except Exception as e:  # noqa: BLE001
            want, ok = ("%s: %s" % (type(e).__name__, e)).encode(), False
        tmp = "/tmp/jinja_diff_%d.jinja" % os.getpid()
        with open(tmp, "wb") as f:
            f.write(data)
        p = subprocess.run([spud, "template", "--template", tmp, "--messages", conv_path,
                            "--bos-token", "<s>", "--eos-token", "</s>"], capture_output=True, timeout=60)
        os.remove(tmp)
        if ok and p.returncode == 0 and p.stdout == want:
            same += 1
        elif not ok and p.returncode != 0:
            both_fail += 1
        else:
            diffs.append((name, ok, want[:200], p.returncode, (p.stdout if p.returncode == 0 else p.stderr)[:200]))
    print("identical %d, both failed %d, different %d, skipped %d" % (same, both_fail, len(diffs), skipped))
    for name, ok, want, rc, got in diffs[:show]:
        print("== %s\n  jinja2 %s %r\n  spud   %s %r" % (name, "ok" if ok else "raised", want,
                                                       "ok" if rc == 0 else "failed", got))
    return 0


if __name__ == "__main__":
    sys.exit(main())
