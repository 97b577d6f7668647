#!/usr/bin/env python3
"""Shows that dependencies point one way.

For every crate of the workspace: which sibling crates it depends on (from its
Cargo.toml), and, for its top modules, which other top modules each one imports
(`crate::name` paths outside comments and test-only files). It fails when a crate or a
module takes part in a cycle, when a module imports one declared above it in LAYERS, or
when a non-test source file is longer than MAX_LINES.

Run from anywhere: `python3 scripts/layers.py` (add `-v` to list every import).
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 600

# Crates, bottom first: a crate may depend only on crates listed before it.
CRATES = ["storage", "device-plugins", "broker", "web", "."]

# Where a crate's top modules have a declared order, bottom first; modules on one
# line are peers and may not import each other in a cycle. Others are only
# checked for cycles.
LAYERS = {
    "broker": [
        ["client", "publish", "settings", "time", "stats"],
        ["fleet"],
        ["link"],
        ["config", "handle", "testing", "fuzz"],
    ],
}

TEST_FILE = re.compile(r"(^|/)(tests?|[a-z_]*_tests)\.rs$|/tests/")
CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")


def rust_files(src):
    for root, _, files in os.walk(src):
        for f in sorted(files):
            if f.endswith(".rs"):
                yield os.path.join(root, f)


def code_lines(path):
    """The file's lines up to its first `#[cfg(test)]`, comments left out."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if s.startswith("#[cfg(test)]"):
                return
            if not s.startswith("//"):
                yield line


def top_module(src, path):
    rel = os.path.relpath(path, src)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def module_edges(src):
    edges = {}
    for path in rust_files(src):
        rel = os.path.relpath(path, src)
        if rel in ("lib.rs", "main.rs") or TEST_FILE.search(rel):
            continue
        me = top_module(src, path)
        edges.setdefault(me, {})
        for line in code_lines(path):
            for m in CRATE_PATH.finditer(line):
                other = m.group(1)
                if other != me:
                    edges[me].setdefault(other, set()).add(rel)
    return edges


def cycles(edges):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def crate_deps(crate):
    with open(os.path.join(ROOT, crate, "Cargo.toml"), encoding="utf-8") as f:
        text = f.read()
    deps = text.split("[dependencies]", 1)[-1].split("\n[", 1)[0]
    return sorted(set(re.findall(r"^fleetmq-([a-z-]+)", deps, re.M)))


def main():
    verbose = "-v" in sys.argv
    failures = []
    names = {c: ("fleetmq" if c == "." else c) for c in CRATES}
    print("crates (bottom first) and the workspace crates each depends on:")
    for i, crate in enumerate(CRATES):
        deps = crate_deps(crate)
        below = {names[c] for c in CRATES[:i]}
        print(f"  {names[crate]:<15} -> {', '.join(deps) or '-'}")
        for d in deps:
            if d not in below:
                failures.append(f"crate {names[crate]} depends on {d}, which is not below it")
    for crate in CRATES:
        src = os.path.join(ROOT, crate, "src")
        edges = module_edges(src)
        graph = {m: set(t) & set(edges) for m, t in edges.items()}
        print(f"\n{names[crate]}: top modules and what they import")
        for m in sorted(graph):
            print(f"  {m:<15} -> {', '.join(sorted(graph[m])) or '-'}")
            if verbose:
                for t in sorted(graph[m]):
                    print(f"      {t}: {', '.join(sorted(edges[m][t]))}")
        for comp in cycles(graph):
            failures.append(f"{names[crate]}: modules in a cycle: {', '.join(comp)}")
        layers = LAYERS.get(crate)
        if layers:
            rank = {m: i for i, row in enumerate(layers) for m in row}
            for m, targets in graph.items():
                if m not in rank:
                    failures.append(f"{names[crate]}: module {m} has no layer in scripts/layers.py")
                    continue
                for t in targets:
                    if rank.get(t, -1) > rank[m]:
                        failures.append(f"{names[crate]}: {m} imports {t}, a layer above it")
    print(f"\nnon-test source files over {MAX_LINES} lines:")
    long = []
    for top in ["src", "storage", "device-plugins", "broker", "web", "examples", "benches"]:
        for path in rust_files(os.path.join(ROOT, top)):
            rel = os.path.relpath(path, ROOT)
            if TEST_FILE.search(rel) or "/target/" in rel:
                continue
            with open(path, encoding="utf-8") as f:
                n = sum(1 for _ in f)
            if n > MAX_LINES:
                long.append(f"{rel} ({n})")
    print("  " + ("\n  ".join(long) if long else "none"))
    failures += [f"over {MAX_LINES} lines: {x}" for x in long]
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\nok: every arrow points down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
