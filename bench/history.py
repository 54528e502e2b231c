#!/usr/bin/env python3
"""A git fast-import stream of N finished requests on top of refs/heads/main, one runner
commit each (a log, a status file, the archived request), as a year of use leaves them.

    bench/history.py N | git -C REPO fast-import --quiet
"""
import sys
import time

n = int(sys.argv[1])
now = int(time.time()) - n
log = b'{"ts":"2026-01-01T00:00:00.000Z","event":"output","stream":"stdout","line":"ok"}\n' * 8
out = sys.stdout.buffer
for i in range(n):
    rid = b"old-%05d" % i
    msg = b"codex: " + rid + b" succeeded\n"
    out.write(b"commit refs/heads/main\n")
    out.write(b"committer codex-runner <codex-runner@localhost> %d +0000\n" % (now + i))
    out.write(b"data %d\n%s" % (len(msg), msg))
    if i == 0:
        out.write(b"from refs/heads/main^0\n")
    status = b'{"id":"' + rid + b'","kind":"noop","state":"succeeded","attempt":1}\n'
    request = b"kind: noop\nparams: {resource: r%d}\n" % (i % 8)
    for path, data in (
        (b"logs/" + rid + b".jsonl", log),
        (b"logs/" + rid + b".status.json", status),
        (b"processed/" + rid + b".yaml", request),
    ):
        out.write(b"M 100644 inline " + path + b"\n")
        out.write(b"data %d\n%s\n" % (len(data), data))
