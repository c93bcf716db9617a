#!/usr/bin/env python3
"""CycloneDX 1.5 SBOM (JSON) of the hybrid-gateway binary, from Cargo's own resolution.

    packaging/sbom.py --target x86_64-unknown-linux-gnu --version 0.1.0 --out FILE

Lists every crate compiled into the binary for that target: the dependency graph from
`cargo metadata --filter-platform TARGET --locked --offline`, walked from the package over
normal dependencies only (dev-dependencies are not in the binary; build-dependencies and
proc-macros run at build time only and are listed with scope "excluded"). Each component
carries its purl (pkg:cargo/NAME@VERSION), licence expression, the SHA-256 that Cargo.lock
pins for the crates.io archive, and its source repository. The dependency graph is included.

build.sh runs it for every package build; the .deb and .rpm ship the result as
/usr/share/doc/hybrid-gateway/sbom.cdx.json. Uses only the standard library and cargo.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def metadata(target: str) -> dict:
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--filter-platform", target, "--locked", "--offline"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def lock_checksums() -> dict[tuple[str, str], str]:
    lock = tomllib.loads((REPO / "Cargo.lock").read_text())
    return {(p["name"], p["version"]): p["checksum"] for p in lock.get("package", []) if "checksum" in p}


def walk(meta: dict, root_name: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Package id -> scope ("required"/"excluded"), and id -> ids it depends on (in the binary)."""
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    pkgs = {p["id"]: p for p in meta["packages"]}
    root = next(i for i, p in pkgs.items() if p["name"] == root_name and p["source"] is None)
    scope: dict[str, str] = {}
    graph: dict[str, list[str]] = {}

    def visit(pid: str, s: str) -> None:
        # "required" wins over "excluded" when a crate is reached both ways.
        if scope.get(pid) == "required" or scope.get(pid) == s:
            return
        scope[pid] = s
        deps = []
        for d in nodes[pid]["deps"]:
            kinds = {k["kind"] for k in d["dep_kinds"]}
            if kinds <= {"dev"}:
                continue
            runtime = None in kinds and pkgs[d["pkg"]]["targets"] and not any(
                "proc-macro" in t["kind"] for t in pkgs[d["pkg"]]["targets"])
            child = "required" if (s == "required" and runtime) else "excluded"
            deps.append(d["pkg"])
            visit(d["pkg"], child)
        graph[pid] = sorted(set(deps))

    visit(root, "required")
    return scope, graph


def purl(p: dict) -> str:
    return f"pkg:cargo/{p['name']}@{p['version']}"


def component(p: dict, scope: str, checksums: dict) -> dict:
    c = {
        "type": "library",
        "bom-ref": purl(p),
        "name": p["name"],
        "version": p["version"],
        "scope": scope,
        "purl": purl(p),
    }
    if p.get("description"):
        c["description"] = " ".join(p["description"].split())
    if p.get("license"):
        c["licenses"] = [{"expression": p["license"]}]
    elif p.get("license_file"):
        c["licenses"] = [{"license": {"name": "see " + Path(p["license_file"]).name}}]
    if (p["name"], p["version"]) in checksums and p["source"] == CRATES_IO:
        c["hashes"] = [{"alg": "SHA-256", "content": checksums[(p["name"], p["version"])]}]
    refs = []
    if p.get("repository"):
        refs.append({"type": "vcs", "url": p["repository"]})
    if p["source"] == CRATES_IO:
        refs.append({"type": "distribution", "url": f"https://crates.io/crates/{p['name']}/{p['version']}"})
    if refs:
        c["externalReferences"] = refs
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--version", required=True, help="the package version the SBOM describes")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    meta = metadata(a.target)
    pkgs = {p["id"]: p for p in meta["packages"]}
    scope, graph = walk(meta, "hybrid-gateway")
    root_id = next(i for i, p in pkgs.items() if p["name"] == "hybrid-gateway" and p["source"] is None)
    root = pkgs[root_id]
    checksums = lock_checksums()
    ref = {pid: (f"pkg:cargo/hybrid-gateway@{a.version}" if pid == root_id else purl(pkgs[pid])) for pid in scope}
    # Reproducible: SOURCE_DATE_EPOCH when set (Debian's convention), and a serial number
    # derived from the content, so the same inputs give the same file.
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    ts = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc) if epoch else datetime.datetime.now(datetime.timezone.utc)
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "hybrid-gateway packaging/sbom.py"}]},
            "component": {
                "type": "application",
                "bom-ref": ref[root_id],
                "name": "hybrid-gateway",
                "version": a.version,
                "purl": ref[root_id],
                "licenses": [{"expression": root["license"]}],
                "description": root.get("description", ""),
            },
            "properties": [{"name": "cargo:target", "value": a.target}],
        },
        "components": [component(pkgs[pid], scope[pid], checksums)
                       for pid in sorted(scope, key=lambda i: (pkgs[i]["name"], pkgs[i]["version"])) if pid != root_id],
        "dependencies": [{"ref": ref[pid], "dependsOn": sorted(ref[d] for d in graph.get(pid, []))}
                         for pid in sorted(scope, key=lambda i: ref[i])],
    }
    body = json.dumps({k: v for k, v in bom.items()}, sort_keys=True)
    bom["serialNumber"] = "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, body))
    Path(a.out).write_text(json.dumps(bom, indent=2) + "\n")
    req = sum(1 for s in scope.values() if s == "required") - 1
    print(f"sbom.py: {a.out}: {req} crates in the binary, {len(scope) - 1 - req} build-time only", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
