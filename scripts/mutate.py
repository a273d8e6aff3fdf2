#!/usr/bin/env python3
"""Mutation testing of zmlx's checks (issue 24).

Each mutant in tests/mutants/*.txt is a one-line change a real bug could
make. For each one, alone: apply it, rebuild incrementally, run its
narrowest check (a `zmlx check` of the ops it touches), then, if that
passes, the ctest tests it names; restore the file whatever happens. A
mutant is killed when a check or test fails, survived when all pass.

Mutant files: blocks separated by blank lines, one field per line:
    id:    short-name
    file:  path from the repository root
    old:   the line as it is (leading/trailing spaces ignored; must match once,
           or give nth)
    nth:   which match of old to change (1-based), when old is not unique
    new:   what the bug makes of it
    why:   the bug it stands for
    check: zmlx check arguments (e.g. --quick --op 'soft*'), optional
    tests: ctest -R regex, optional (default: every test)
Lines starting with '#' are comments.

    scripts/mutate.py [--build DIR] [--only ID_GLOB] [--json OUT] [--list]

The build directory (default build-mutate) is configured on first use; its
kernel cache is kept between mutants (a mutant's kernels have new keys).
The tool edits the working tree while it runs: run it in a worktree of its
own (git worktree add /tmp/mut HEAD) to keep working meanwhile.
Prints one row per mutant and the score; exits 1 when a mutant cannot be
applied (its `old` line is gone: the list needs updating).
"""
import argparse, fnmatch, glob, json, os, re, shlex, signal, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(path):
    mutants, cur = [], {}
    for raw in open(path, encoding="utf-8").read().split("\n") + [""]:
        line = raw.rstrip("\n")
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                cur["source"] = os.path.relpath(path, ROOT)
                mutants.append(cur)
                cur = {}
            continue
        key, _, val = line.partition(":")
        key = key.strip()
        if key not in ("id", "file", "old", "new", "nth", "why", "check", "tests"):
            sys.exit(f"{path}: unknown field {key!r} in line {line!r}")
        cur[key] = val.strip()
    for m in mutants:
        for k in ("id", "file", "old", "new", "why"):
            if k not in m:
                sys.exit(f"{m.get('source')}: mutant {m.get('id', '?')} has no '{k}'")
    return mutants


def run(cmd, cwd, env, timeout):
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, errors="replace")
        return p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        return 124, (e.stdout or "") if isinstance(e.stdout, str) else ""


def apply(m):
    path = os.path.join(ROOT, m["file"])
    text = open(path, encoding="utf-8").read()
    lines = text.split("\n")
    hits = [i for i, l in enumerate(lines) if l.strip() == m["old"]]
    nth = int(m.get("nth", "0"))
    if (nth == 0 and len(hits) != 1) or nth > len(hits):
        return None, f"'old' matches {len(hits)} lines of {m['file']}"
    i = hits[nth - 1 if nth else 0]
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i] = indent + m["new"]
    open(path, "w", encoding="utf-8").write("\n".join(lines))
    return text, None


def main():
    # A kill restores the mutated file too (SystemExit runs the finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-mutate"))
    ap.add_argument("--only", default="*")
    ap.add_argument("--json")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--validate", action="store_true",
                    help="only check that every mutant applies (and restore)")
    ap.add_argument("--timeout", type=int, default=600)
    a = ap.parse_args()
    mutants = []
    for f in sorted(glob.glob(os.path.join(ROOT, "tests", "mutants", "*.txt"))):
        mutants += parse(f)
    ids = [m["id"] for m in mutants]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        sys.exit(f"duplicate mutant ids: {sorted(dup)}")
    mutants = [m for m in mutants if fnmatch.fnmatch(m["id"], a.only)]
    if a.list:
        for m in mutants:
            print(f"{m['id']:28} {m['file']}: {m['why']}")
        print(f"{len(mutants)} mutants")
        return 0
    if a.validate:
        bad = 0
        for m in mutants:
            original, err = apply(m)
            if err:
                print(f"{m['id']}: {err}")
                bad += 1
            else:
                open(os.path.join(ROOT, m["file"]), "w", encoding="utf-8").write(original)
        print(f"{len(mutants) - bad} of {len(mutants)} mutants apply")
        return 1 if bad else 0
    env = dict(os.environ)
    env["ZMLX_CACHE_DIR"] = os.path.join(a.build, "mutate_kernel_cache")
    env["POCL_CACHE_DIR"] = os.path.join(a.build, "mutate_pocl_cache")
    if not os.path.exists(os.path.join(a.build, "CMakeCache.txt")):
        rc, out = run(["cmake", "-S", ROOT, "-B", a.build, "-DZMLX_BUILD_BENCH=OFF"], ROOT, env, 600)
        if rc:
            sys.exit("configure failed:\n" + out[-3000:])
    build = ["cmake", "--build", a.build, "-j", str(os.cpu_count() or 2)]
    rc, out = run(build, ROOT, env, 1800)
    if rc:
        sys.exit("the unmutated tree does not build:\n" + out[-3000:])
    results, broken = [], 0
    print(f"{'mutant':28} {'result':9} {'by':30} {'s':>5}")
    for m in mutants:
        t0 = time.time()
        original, err = apply(m)
        if err:
            print(f"{m['id']:28} {'STALE':9} {err}")
            results.append(dict(m, result="stale", by=err))
            broken += 1
            continue
        try:
            result, by = "survived", ""
            rc, out = run(build, ROOT, env, a.timeout)
            if rc:
                result, by = "killed", "build"
            if result == "survived" and m.get("check"):
                cmd = [os.path.join(a.build, "zmlx"), "check", "--seed", "1"] + shlex.split(m["check"])
                rc, out = run(cmd, ROOT, env, a.timeout)
                if rc:
                    result, by = "killed", "check " + m["check"]
            if result == "survived":
                cmd = ["ctest", "--test-dir", a.build, "-j", str(os.cpu_count() or 2),
                       "--timeout", str(a.timeout)]
                if m.get("tests"):
                    cmd += ["-R", m["tests"]]
                rc, out = run(cmd, ROOT, env, a.timeout * 4)
                if rc:
                    failed = re.findall(r"Test\s+#\d+:\s+(\S+)\s+\.*\s*\*+(?:Failed|Exception|Timeout)", out)
                    failed += re.findall(r"^\s*\d+ - (\S+) \((?:Failed|Timeout|SEGFAULT|Subprocess aborted)\)", out, re.M)
                    names = sorted(set(failed))
                    result, by = "killed", ",".join(names) if names else "ctest"
        finally:
            open(os.path.join(ROOT, m["file"]), "w", encoding="utf-8").write(original)
        dt = time.time() - t0
        print(f"{m['id']:28} {result:9} {by[:30]:30} {dt:5.0f}", flush=True)
        results.append(dict(m, result=result, by=by, seconds=round(dt, 1)))
    run(build, ROOT, env, 1800)  # leave the build matching the tree
    killed = sum(r["result"] == "killed" for r in results)
    scored = sum(r["result"] in ("killed", "survived") for r in results)
    score = 100.0 * killed / scored if scored else 0.0
    print(f"{killed} killed, {scored - killed} survived, {broken} stale: score {score:.1f}%")
    for r in results:
        if r["result"] == "survived":
            print(f"  survived {r['id']}: {r['why']}")
    if a.json:
        json.dump({"score": score, "mutants": results}, open(a.json, "w"), indent=1)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
