#!/usr/bin/env python3
"""The library's layering, checked against its #include lines (issue 16).

docs/architecture.md draws the layers once, top to bottom, in its ```layers block: one
line per layer, each naming one or more folders (folders on one line are side by side
and may not include each other). Every source file of core/, dist/, backends/ and
include/ belongs to the deepest listed folder holding it, and may include only its own
folder and the folders of the layers below. Below the C ABI glue (core/abi/) no code
calls a moe_* entry point either: those are the ABI's own implementation, above.

Prints the include graph between folders, then each include or call that breaks the
drawing, and exits 1 when there is any (or when a source folder is in no layer).

    scripts/check_layers.py [REPO_ROOT]
"""
import os
import re
import sys
from collections import defaultdict

SOURCES = (".h", ".hpp", ".cpp", ".cu", ".cuh")
# A call of a C entry point (moe_foo(...)); the handle structs' constructors and the
# plugin entry point's definition are not calls into the ABI.
ABI_CALL = re.compile(r"\b(moe_[a-z0-9_]+)\s*\(")
NOT_CALLS = {"moe_layer", "moe_ctx", "moe_group", "moe_comm", "moe_plugin_backend"}


def read_layers(root):
    text = open(os.path.join(root, "docs", "architecture.md"), encoding="utf-8").read()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    if not block:
        sys.exit("check_layers: docs/architecture.md has no ```layers block")
    rank = {}
    # Each line: the folders, then two or more spaces, then what the layer is.
    lines = [re.split(r"\s{2,}", line.strip())[0] for line in block.group(1).splitlines()
             if line.strip()]
    for height, line in enumerate(reversed(lines)):
        for folder in (f.strip() for f in line.split(",")):
            if not os.path.isdir(os.path.join(root, folder)):
                sys.exit(f"check_layers: the layer drawing names {folder}, which is no folder")
            rank[folder] = height
    return rank


def strip_comments(code):
    code = re.sub(r"/\*.*?\*/", "", code, flags=re.S)
    code = re.sub(r"//[^\n]*", "", code)
    return re.sub(r'"(\\.|[^"\\\n])*"', '""', code)


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    rank = read_layers(root)
    folders = sorted(rank, key=len, reverse=True)

    def folder_of(path):
        return next((f for f in folders if path.startswith(f + "/")), None)

    edges, problems = defaultdict(set), []
    for top in ("core", "dist", "backends", "include"):
        for folder, _, files in os.walk(os.path.join(root, top)):
            for name in sorted(files):
                if not name.endswith(SOURCES):
                    continue
                path = os.path.relpath(os.path.join(folder, name), root)
                source = folder_of(path)
                if source is None:
                    problems.append(f"{path}: its folder is in no layer of docs/architecture.md")
                    continue
                code = open(os.path.join(root, path), encoding="utf-8").read()
                for target_path in re.findall(r'#include "([^"]+)"', code):
                    if target_path.startswith("moe/"):
                        target_path = "include/" + target_path
                    target = folder_of(target_path)
                    if target is None or target == source:
                        continue
                    edges[source].add(target)
                    if rank[target] >= rank[source]:
                        problems.append(f"{path} includes {target_path}: {target} is not below "
                                        f"{source}")
                if rank[source] < rank.get("core/abi", 0) and not source.startswith("include"):
                    for call in sorted(set(ABI_CALL.findall(strip_comments(code))) - NOT_CALLS):
                        problems.append(f"{path} calls {call}, an entry point of core/abi above it")
    for source in sorted(edges, key=lambda f: -rank[f]):
        print(f"{source} -> {', '.join(sorted(edges[source], key=lambda f: -rank[f]))}")
    for problem in problems:
        print(f"check_layers: {problem}")
    print(f"check_layers: {len(problems)} problems, {len(rank)} folders in "
          f"{len(set(rank.values()))} layers")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
