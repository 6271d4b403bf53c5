"""Mutation testing: apply hand-written single-point bugs to refgen one at a time and run the
tests that cover each; a mutant the tests fail on is killed, one they pass survived.

The mutants live in benchmarks/mutants/<area>.json, a JSON list of objects

    {"file": "refgen/....py", "find": "text occurring exactly once in the file",
     "replace": "the mutated text", "why": "the mistake it models",
     "tests": ["tests/... or node ids"], "equivalent": "why no test can tell (optional)"}

Mutants marked equivalent are not run; the kill rate is killed / (all - equivalent). The
work happens in a copy of the working tree (git's tracked and unignored files) in a temporary
directory, so the repository is never modified. Before the mutants, each area's tests run
once unmutated: a failure there is reported and stops the run (it would count as a kill).

    python benchmarks/mutation.py                          # every list (tens of minutes)
    python benchmarks/mutation.py --area distributions     # one list
    python benchmarks/mutation.py --file refgen/optim.py   # the mutants of one file
    python benchmarks/mutation.py --smoke                  # two mutants: is the harness sound?

Results go to benchmarks/results/mutation.json (per area, so areas run separately accumulate,
and a --file run replaces only that file's records; --smoke writes nothing). Status per mutant: killed (a test failed), timeout (counted as
killed), survived, or error (its find text is not in the file exactly once, or pytest could
not collect/run the tests).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "benchmarks" / "mutants"
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"
KEYS = {"file", "find", "replace", "why", "tests"}
OPTIONAL = {"equivalent"}


def load(area=None, file=None):
    """{area: [mutant, ...]} from benchmarks/mutants/*.json, optionally only one area/file."""
    lists = {}
    for path in sorted(MUTANTS.glob("*.json")):
        if area is not None and path.stem != area:
            continue
        ms = json.loads(path.read_text())
        if file is not None:
            ms = [m for m in ms if m.get("file") == file]
        if ms:
            lists[path.stem] = ms
    return lists


def problems(m, root=ROOT):
    """What is wrong with mutant ``m`` (a list of strings; empty when it is well formed)."""
    if not isinstance(m, dict):
        return ["not an object"]
    out = []
    missing, extra = KEYS - set(m), set(m) - KEYS - OPTIONAL
    if missing:
        out.append(f"missing keys {sorted(missing)}")
    if extra:
        out.append(f"unknown keys {sorted(extra)}")
    if missing:
        return out
    for k in ("file", "find", "replace", "why"):
        if not isinstance(m[k], str) or (k != "replace" and not m[k]):
            out.append(f"{k!r} must be a non-empty string")
    if "equivalent" in m and not (isinstance(m["equivalent"], str) and m["equivalent"]):
        out.append("'equivalent' must say why")
    if m["find"] == m["replace"]:
        out.append("replace equals find")
    if not (isinstance(m["tests"], list) and m["tests"]
            and all(isinstance(t, str) and t for t in m["tests"])):
        out.append("'tests' must be a non-empty list of pytest paths")
    else:
        for t in m["tests"]:
            if not (root / t.split("::")[0]).is_file():
                out.append(f"test file {t.split('::')[0]} does not exist")
    src = root / m["file"] if isinstance(m["file"], str) else None
    if src is None or not src.is_file():
        out.append(f"file {m['file']!r} does not exist")
    elif isinstance(m["find"], str) and m["find"]:
        n = src.read_text().count(m["find"])
        if n != 1:
            out.append(f"find text occurs {n} times in {m['file']} (must be exactly once)")
    return out


def copy_tree(dst: Path):
    """Copy git's tracked and unignored files (benchmark results left out) to ``dst``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\n")
    for f in files:
        if not f or f.startswith("benchmarks/results/") or not (ROOT / f).is_file():
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)


def pytest_run(tree: Path, tests, timeout):
    """(returncode or 'timeout', seconds, last lines of output) of the tests in ``tree``."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", HYPOTHESIS_PROFILE="mutation",
               PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(tree))
    env.pop("REFGEN_BACKEND", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, ""
    tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-3:])
    return r.returncode, time.perf_counter() - t0, tail


def run_mutant(tree: Path, m, timeout):
    """Apply ``m`` in ``tree``, run its tests, restore the file; return a result record."""
    rec = {"file": m["file"], "find": m["find"], "replace": m["replace"], "why": m["why"]}
    if "equivalent" in m:
        return dict(rec, status="equivalent")
    path = tree / m["file"]
    original = path.read_text()
    if original.count(m["find"]) != 1:
        return dict(rec, status="error",
                    detail=f"find text occurs {original.count(m['find'])} times")
    try:
        path.write_text(original.replace(m["find"], m["replace"]))
        rc, secs, tail = pytest_run(tree, m["tests"], timeout)
    finally:
        path.write_text(original)
    if rc == "timeout":
        status = "timeout"
    elif rc == 0:
        status = "survived"
    elif rc in (1, 2):  # test failures, or an error while importing the mutated code
        status = "killed"
    else:  # 3 internal error, 4 usage (a bad test path), 5 nothing collected
        status = "error"
    out = dict(rec, status=status, seconds=round(secs, 1))
    if status != "killed":
        out["detail"] = tail
    return out


def summary(records):
    n = {s: sum(r["status"] == s for r in records)
         for s in ("killed", "timeout", "survived", "equivalent", "error")}
    live = len(records) - n["equivalent"]
    n["count"] = len(records)
    n["kill_rate"] = round((n["killed"] + n["timeout"]) / live, 4) if live else None
    return n


def machine():
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "numpy": __import__("numpy").__version__}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--area", help="only benchmarks/mutants/AREA.json")
    ap.add_argument("--file", help="only the mutants of this source file (refgen/...py)")
    ap.add_argument("--smoke", action="store_true", help="two mutants, nothing written")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the unmutated run of each area's tests")
    args = ap.parse_args(argv)
    # a terminated run still removes its temporary copy (the context manager below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    lists = load(args.area, args.file)
    if not lists:
        sys.exit(f"no mutants selected (area={args.area!r}, file={args.file!r}); lists: "
                 f"{', '.join(p.stem for p in sorted(MUTANTS.glob('*.json')))}")
    bad = [(a, i, p) for a, ms in lists.items() for i, m in enumerate(ms) for p in problems(m)]
    for a, i, p in bad:
        print(f"{a}[{i}]: {p}")
    if args.smoke:
        first = next(iter(lists))
        lists = {first: [m for m in lists[first] if "equivalent" not in m][:2]}

    command = "python benchmarks/mutation.py " + " ".join(argv if argv is not None
                                                          else sys.argv[1:])
    results = {}
    with tempfile.TemporaryDirectory(prefix="refgen-mutation-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        for area, ms in lists.items():
            if not args.no_baseline:
                tests = sorted({t for m in ms if "equivalent" not in m for t in m["tests"]})
                rc, secs, tail = pytest_run(tree, tests, args.timeout * 3)
                print(f"{area}: baseline {len(tests)} test paths, {secs:.0f} s, rc {rc}",
                      flush=True)
                if rc != 0:
                    sys.exit(f"{area}: the covering tests fail without any mutant:\n{tail}")
            records = []
            for i, m in enumerate(ms):
                r = run_mutant(tree, m, args.timeout)
                records.append(r)
                print(f"{area}[{i}] {r['status']:<10} {r.get('seconds', 0):6.1f}s  "
                      f"{m['file']}: {m['why']}", flush=True)
                if r["status"] in ("survived", "error") and r.get("detail"):
                    print("    " + r["detail"].replace("\n", "\n    "), flush=True)
            results[area] = dict(summary(records), commands=[command], mutants=records)
            s = results[area]
            print(f"{area}: {s['killed'] + s['timeout']}/{s['count'] - s['equivalent']} "
                  f"killed ({s['equivalent']} equivalent, {s['error']} errors)", flush=True)

    everything = [r for s in results.values() for r in s["mutants"]]
    total = summary(everything)
    print(f"kill rate {total['kill_rate']}: {total['killed'] + total['timeout']} of "
          f"{total['count'] - total['equivalent']} killed, {total['survived']} survived, "
          f"{total['equivalent']} equivalent, {total['error']} errors")
    if args.smoke:
        return 0 if total["error"] == 0 else 1
    # accumulate per area: runs of single areas add up to the whole
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    areas = old.get("areas", {})
    if args.file is None:
        areas.update(results)
    else:  # a one-file run replaces only that file's records inside each area
        for area, s in results.items():
            before = areas.get(area, {})
            kept = [r for r in before.get("mutants", []) if r["file"] != args.file]
            recs = kept + s["mutants"]
            areas[area] = dict(summary(recs), commands=before.get("commands", []) + [command],
                               mutants=recs)
    allrecs = [r for s in areas.values() for r in s["mutants"]]
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python benchmarks/mutation.py --area AREA (one run per area; each "
                      "area lists the commands whose records it holds)",
           "machine": machine(), "total": summary(allrecs),
           "areas": {a: areas[a] for a in sorted(areas)}}
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
