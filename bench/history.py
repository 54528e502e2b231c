#!/usr/bin/env python3
"""A git fast-import stream of N finished requests on top of refs/heads/main, one runner
commit each (a log, a status file, the archived request), as a year of use leaves them, in
the layout named (codex.layout: sharded, the default, or flat).

    bench/history.py N [sharded|flat] | git -C REPO fast-import --quiet
"""
import hashlib
import sys
import time

n = int(sys.argv[1])
layout = sys.argv[2] if len(sys.argv) > 2 else "sharded"
if layout not in ("sharded", "flat"):
    sys.exit(f"history.py: unknown layout {layout!r}")


def place(top, rid, suffix):
    """Where the runner puts a result file (src/record/ledger.rs)."""
    if layout == "flat":
        return top + b"/" + rid + suffix
    shard = hashlib.sha256(rid).hexdigest()[:2].encode()
    return top + b"/" + shard + b"/" + rid + suffix


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
        (place(b"logs", rid, b".jsonl"), log),
        (place(b"logs", rid, b".status.json"), status),
        (place(b"processed", rid, b".yaml"), request),
    ):
        out.write(b"M 100644 inline " + path + b"\n")
        out.write(b"data %d\n%s\n" % (len(data), data))
