#!/usr/bin/env python3
"""Which check case reaches which kernel path: runs `zmlx check --quick
--paths` and prints, per op and dtype, each distinct variant of the op's own
kernels (the template switches that pick a path: VEC, NV, TABLE, ...) with
the first case that launched it and how many cases did. Runtime helper
kernels (fill, copy, the elementwise engine's ew_*, autograd's zmlx_ad_*)
are left out unless --all.
usage: scripts/check-paths.py [--zmlx build/zmlx] [--op GLOB] [--all] [--seed N]"""
import argparse, re, subprocess, sys

HELPERS = re.compile(r"^(fill|copy|ew_|zmlx_ad_|cast|gather|scatter)")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zmlx", default="build/zmlx")
    ap.add_argument("--op", default="*")
    ap.add_argument("--seed", default="1")
    ap.add_argument("--all", action="store_true")
    a = ap.parse_args()
    out = subprocess.run([a.zmlx, "check", "--quick", "--paths", "--op", a.op, "--seed", a.seed],
                         capture_output=True, text=True).stdout
    seen = {}  # (op, dtype, variant) -> [first case, count]
    order = []
    row = None
    for line in out.splitlines():
        if line.startswith("    launched "):
            if row is None:
                continue
            variant = line[len("    launched "):]
            if not a.all and HELPERS.match(variant):
                continue
            key = (row[0], row[1], variant)
            if key not in seen:
                seen[key] = [row[2], 0]
                order.append(key)
            seen[key][1] += 1
        elif line and not line.startswith("#") and not line.startswith("op "):
            f = line.split()
            if len(f) >= 4 and f[1] in ("opencl", "cuda"):
                # the case text: shape and what, between dtype and the numbers
                m = re.match(r"^(\S+)\s+\S+\s+(\S+)\s+(.*?)\s+-?[0-9.]+e[+-]\d+\s+\S+\s+(pass|FAIL)", line)
                row = (m.group(1), m.group(2), re.sub(r"\s+", " ", m.group(3))) if m else None
    print("| op | dtype | kernel variant | first case | cases |")
    print("|---|---|---|---|---|")
    for k in order:
        print(f"| {k[0]} | {k[1]} | `{k[2]}` | {seen[k][0]} | {seen[k][1]} |")

if __name__ == "__main__":
    sys.exit(main())
