#!/usr/bin/env python3
"""The software bill of materials of one target's binary, as CycloneDX 1.5 JSON.

    python3 packaging/sbom.py TARGET > sbom.cdx.json

The components are the crates linked into the binary for TARGET: from `cargo metadata`
(Cargo.lock, --locked), the resolved graph walked from ecr-edge along normal dependencies only
(build scripts, proc macros' own dependencies and dev-dependencies are not linked into it),
with each crate's version, licence expression, source and the SHA-256 Cargo.lock records.
Deterministic: the same commit gives the same bytes (the time is SOURCE_DATE_EPOCH, the serial
number derives from the contents), so reproducible packages stay reproducible.
"""

import datetime
import hashlib
import json
import os
import subprocess
import sys
import uuid


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: sbom.py TARGET")
    target = sys.argv[1]
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--locked", "--format-version", "1",
             "--filter-platform", target],
            check=True, capture_output=True, text=True,
        ).stdout
    )
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]
    checksums = lock_checksums(os.path.join(meta["workspace_root"], "Cargo.lock"))

    # Walk normal dependencies from the root: what is linked. A proc macro runs at build time.
    linked, graph, todo = set(), {}, [root]
    while todo:
        pid = todo.pop()
        if pid in linked:
            continue
        linked.add(pid)
        deps = []
        for d in nodes[pid]["deps"]:
            if not any(k["kind"] is None for k in d["dep_kinds"]):
                continue
            if any("proc-macro" in t["kind"] for t in packages[d["pkg"]]["targets"]):
                continue
            deps.append(d["pkg"])
            todo.append(d["pkg"])
        graph[pid] = sorted(set(deps))

    def ref(pid):
        p = packages[pid]
        return f"pkg:cargo/{p['name']}@{p['version']}"

    def component(pid, kind):
        p = packages[pid]
        c = {"type": kind, "bom-ref": ref(pid), "name": p["name"], "version": p["version"],
             "purl": ref(pid)}
        if p.get("description"):
            c["description"] = " ".join(p["description"].split())
        if p.get("license"):
            c["licenses"] = [{"expression": p["license"]}]
        digest = checksums.get((p["name"], p["version"]))
        if digest:
            c["hashes"] = [{"alg": "SHA-256", "content": digest}]
        refs = []
        if p.get("repository"):
            refs.append({"type": "vcs", "url": p["repository"]})
        if p.get("source", "") and p["source"].startswith("registry+"):
            refs.append({"type": "distribution",
                         "url": f"https://crates.io/crates/{p['name']}/{p['version']}"})
        if refs:
            c["externalReferences"] = refs
        return c

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or commit_time())
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    components = sorted((component(pid, "library") for pid in linked if pid != root),
                        key=lambda c: (c["name"], c["version"]))
    application = component(root, "application")
    application["properties"] = [{"name": "cargo:target", "value": target}]
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": [{"name": "packaging/sbom.py", "vendor": "ecr-edge"}],
            "component": application,
        },
        "components": components,
        "dependencies": sorted(
            ({"ref": ref(pid), "dependsOn": sorted({ref(d) for d in deps})}
             for pid, deps in graph.items()),
            key=lambda d: d["ref"],
        ),
    }
    body = json.dumps(bom, sort_keys=True).encode()
    bom["serialNumber"] = "urn:uuid:" + str(uuid.UUID(bytes=hashlib.sha256(body).digest()[:16],
                                                      version=5))
    json.dump(bom, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


def lock_checksums(path):
    """(name, version) -> the checksum Cargo.lock records for registry crates."""
    out, name, version, in_package = {}, None, None, False
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line.startswith("["):
            in_package = line == "[[package]]"
            name = version = None
        elif not in_package:
            continue
        elif line.startswith("name = "):
            name = line.split('"')[1]
        elif line.startswith("version = "):
            version = line.split('"')[1]
        elif line.startswith("checksum = "):
            out[(name, version)] = line.split('"')[1]
    return out


def commit_time():
    try:
        return subprocess.run(["git", "log", "-1", "--format=%ct"], check=True,
                              capture_output=True, text=True).stdout.strip() or 0
    except (OSError, subprocess.CalledProcessError):
        return 0


if __name__ == "__main__":
    main()
