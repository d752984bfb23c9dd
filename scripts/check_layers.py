#!/usr/bin/env python3
"""The include graph between the library's folders, and its cycles (issue 16).

Each source file of core/, dist/, backends/ and include/ belongs to the deepest listed
folder holding it; an `#include "a/b.hpp"` of a file in another folder is an edge. A
cycle is a pair of folders that reach each other. Prints the graph, one example include
per cycle edge, and exits 1 when there is any cycle.

Not yet part of the test command: the layout still has cycles, listed by this script,
and removing them is the open work of issue 16 (docs/architecture.md, "Layering").

    scripts/check_layers.py [REPO_ROOT]
"""
import os
import re
import sys
from collections import defaultdict

FOLDERS = ["include/moe", "core/abi", "core/telemetry", "core", "dist", "backends/cpu_ref",
           "backends/onednn", "backends/cuda", "backends"]
SOURCES = (".h", ".hpp", ".cpp", ".cu", ".cuh")


def folder_of(path):
    return next((f for f in FOLDERS if path.startswith(f + "/")), None)


def include_graph(root):
    edges, example = defaultdict(set), {}
    for top in ("core", "dist", "backends", "include"):
        for folder, _, files in os.walk(os.path.join(root, top)):
            for name in sorted(files):
                if not name.endswith(SOURCES):
                    continue
                path = os.path.relpath(os.path.join(folder, name), root)
                source = folder_of(path)
                with open(os.path.join(root, path), encoding="utf-8") as f:
                    included = re.findall(r'#include "([^"]+)"', f.read())
                for target_path in included:
                    if target_path.startswith("moe/"):
                        target_path = "include/" + target_path
                    target = folder_of(target_path)
                    if target and target != source:
                        edges[source].add(target)
                        example.setdefault((source, target), f"{path} includes {target_path}")
    return edges, example


def reachable(edges, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    edges, example = include_graph(root)
    for source in sorted(edges):
        print(f"{source} -> {', '.join(sorted(edges[source]))}")
    cycles = [(a, b) for a in sorted(edges) for b in sorted(edges[a]) if a in reachable(edges, b)]
    for a, b in cycles:
        print(f"cycle: {a} -> {b} ({example[(a, b)]})")
    print(f"check_layers: {len(cycles)} edges on cycles")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
