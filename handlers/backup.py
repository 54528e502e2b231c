#!/usr/bin/env python3
"""backup: snapshot a database's manifest into /tmp (a tmpfs) and print its checksum.

Simulated: it reads the request from $CODEX_REQUEST, writes the archive to the container's
/tmp and reports what a real handler would upload.
"""
import hashlib
import json
import os
import sys
import tarfile
import time

with open(os.environ["CODEX_REQUEST"], encoding="utf-8") as f:
    request = json.load(f)
params = request.get("params", {})
database = params["database"]
retention = params.get("retention_days", 7)

manifest = {
    "database": database,
    "request": request["id"],
    "commit": os.environ["CODEX_COMMIT"],
    "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "retention_days": retention,
}
path = f"/tmp/{database}.manifest.json"
with open(path, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2)
archive = f"/tmp/{database}.tar.gz"
with tarfile.open(archive, "w:gz") as tar:
    tar.add(path, arcname=os.path.basename(path))
digest = hashlib.sha256(open(archive, "rb").read()).hexdigest()
print(f"backup of {database}: {os.path.getsize(archive)} bytes, sha256 {digest}")
print(f"kept for {retention} days")
sys.stdout.flush()
