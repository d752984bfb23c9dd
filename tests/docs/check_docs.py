"""The docs match the code: docs/api.md names every function of the public C headers,
docs/metrics.md names every metric of the library's catalogue (read from the library
itself), nothing cites the METRICS.md that is not in the repository, and every relative
link of the README and docs/ leads to a file that exists.

    python3 tests/docs/check_docs.py REPO_ROOT
"""
import os
import re
import sys

root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
sys.path.insert(0, os.path.join(root, "bindings", "python"))
problems = []


def read(path):
    with open(os.path.join(root, path), encoding="utf-8") as f:
        return f.read()


# 1. Every function of the public C headers in docs/api.md.
api = read("docs/api.md")
functions = set()
for header in sorted(os.listdir(os.path.join(root, "include", "moe"))):
    if not header.endswith(".h"):
        continue
    text = read(os.path.join("include", "moe", header))
    # Exported functions (MOE_API ...) and the header-only inline constructors.
    functions |= set(re.findall(r"MOE_API[^;{(]*?\b(moe_\w+)\s*\(", text))
    functions |= {f for f in re.findall(r"static inline[^;{(]*?\b(moe_\w+)\s*\(", text)
                  if not f.endswith("_")}  # trailing underscore: the header's internals
missing = sorted(f for f in functions if not re.search(r"\b" + f + r"\b", api))
if missing:
    problems.append(f"docs/api.md does not document {len(missing)} functions: {missing}")

# 2. Every metric of the catalogue in docs/metrics.md.
import moe  # noqa: E402  (the library under test: MOE_LIBRARY or build/)

metrics_doc = read("docs/metrics.md")
names = [name for name, _, _ in moe.metric_names()]
missing = [n for n in names if not re.search(r"`" + re.escape(n) + r"`", metrics_doc)]
if missing:
    problems.append(f"docs/metrics.md does not define {len(missing)} metrics: {missing}")

# 3. No citation of a METRICS.md that the repository does not hold. (The tree is walked,
# not `git ls-files`: a fresh machine, or a copy of the sources, may have no git.)
this = os.path.abspath(__file__)
for folder, subfolders, files in os.walk(root):
    subfolders[:] = [d for d in subfolders
                     if not d.startswith((".", "build")) and d not in ("__pycache__",)]
    for name in files:
        path = os.path.join(folder, name)
        if path == this or not name.endswith(
                (".md", ".h", ".hpp", ".c", ".cpp", ".cu", ".py", ".sh", ".txt", ".cmake")):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(lines, 1):
            if "METRICS.md" in line:
                problems.append(f"{os.path.relpath(path, root)}:{number}: cites METRICS.md "
                                "(the contract is docs/metrics.md)")

# 4. Relative links of the README and docs/ lead somewhere.
for path in ["README.md"] + [os.path.join("docs", p) for p in sorted(os.listdir(
        os.path.join(root, "docs"))) if p.endswith(".md")]:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(path)):
        if re.match(r"[a-z]+:", target):
            continue
        resolved = os.path.normpath(os.path.join(root, os.path.dirname(path), target))
        if not os.path.exists(resolved):
            problems.append(f"{path}: link to {target} leads nowhere")

for p in problems:
    print("check_docs:", p)
print(f"check_docs: {len(functions)} functions, {len(names)} metrics checked; "
      f"{len(problems)} problems")
sys.exit(1 if problems else 0)
