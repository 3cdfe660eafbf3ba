"""Header-only DICOM anonymisation: speed and PHI leaks of defacer vs dicom-anonymizer, dicognito, deid.

All four run on the same planted-PHI corpus (tests/phi/phi_corpus.py: 2 patients, 3 studies,
6 series; names, IDs, dates, addresses, free text, nested sequences, private blocks, file
meta, UID references), one process each, timed inside the process (imports excluded), on
the same machine in one run.  Leaks = planted strings and original UIDs found anywhere in
the output bytes.

The three other tools are installed only for the benchmark, in their own venv::

    python3.11 -m venv build/bench-venv
    build/bench-venv/bin/pip install pydicom==3.0.2 dicom-anonymizer==2.1.0 dicognito==0.19.0 deid==0.4.13
    .venv/bin/python benchmarks/dicom_anonymize.py --slices 167     # about 1,000 files

Results go to reports/dicom_anonymize.json and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "phi"))
from phi_corpus import build_corpus, leaks

RUNNERS = {
    "dicom-anonymizer 2.1.0": """
from dicomanonymizer.simpledicomanonymizer import anonymize_dicom_file
for i, f in enumerate(files):
    anonymize_dicom_file(str(f), str(out / f"{i:05d}.dcm"), delete_private_tags=True)
""",
    "dicognito 0.19.0": """
import pydicom
from dicognito.anonymizer import Anonymizer
anonymizer = Anonymizer(seed="benchmark-seed")
for i, f in enumerate(files):
    ds = pydicom.dcmread(f)
    anonymizer.anonymize(ds)
    ds.save_as(out / f"{i:05d}.dcm")
""",
    "deid 0.4.13": """
import logging, os, contextlib, io
logging.disable(logging.CRITICAL)
from deid.dicom import replace_identifiers
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    replace_identifiers(dicom_files=[str(f) for f in files], save=True, output_folder=str(out), remove_private=True)
""",
}
TEMPLATE = """
import json, sys, time
from pathlib import Path
files = sorted(Path(sys.argv[1]).glob("*.dcm"))
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
{imports}
start = time.perf_counter()
{body}
print(json.dumps({{"seconds": time.perf_counter() - start, "files": len(files)}}))
"""


def run_defacer(corpus_dir: Path, out: Path, jobs: int = 1) -> dict[str, float]:
    from defacer.io.dicom_series import anonymize_files
    from defacer.phi import DeidOptions, Pseudonymizer, Scrubber

    scrubber = Scrubber(DeidOptions(), Pseudonymizer(b"benchmark-key-0123456789abcdef"))
    start = time.perf_counter()
    written, _ = anonymize_files(corpus_dir, out, scrubber, jobs=jobs)
    return {"seconds": time.perf_counter() - start, "files": len(written)}


def run_other(python: Path, body: str, corpus_dir: Path, out: Path) -> dict[str, float]:
    """Run one tool's ``body`` in ``python``; the clock starts after its imports (lines starting with import/from)."""
    lines = body.strip().splitlines()
    imports = "\n".join(line for line in lines if line.startswith(("import ", "from ")))
    rest = "\n".join(line for line in lines if not line.startswith(("import ", "from ")))
    code = TEMPLATE.format(imports=imports, body=rest)
    result = subprocess.run([str(python), "-c", code, str(corpus_dir), str(out)], capture_output=True, text=True,
                            timeout=3600, check=False)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def count_leaks(out: Path, corpus) -> tuple[int, int, list[str]]:
    found: set[str] = set()
    for path in out.rglob("*"):
        if path.is_file():
            found |= leaks(path.read_bytes(), corpus)
    names = sorted(found)
    return len(found - corpus.uids), len(found & corpus.uids), names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=167, help="files per series (6 series); 167 gives 1,002 files")
    parser.add_argument("--python", type=Path, default=ROOT / "build" / "bench-venv" / "bin" / "python",
                        help="interpreter with dicom-anonymizer, dicognito and deid installed")
    parser.add_argument("--jobs", type=int, default=2,
                        help="also time defacer with this many worker processes (1: skip; others are single-process)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per tool; the fastest is reported")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build",
                        help="where the corpus and outputs are written (a fast local disk; removed afterwards)")
    parser.add_argument("--report", type=Path, default=ROOT / "reports" / "dicom_anonymize.json")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dicom-bench-", dir=args.workdir))
    try:
        corpus = build_corpus(work / "in", slices=args.slices)
        results: dict[str, dict] = {}
        for attempt in range(args.repeat):  # best of N, tools interleaved so that load spikes hit all of them
            last = attempt == args.repeat - 1
            runs = {"defacer": lambda out: run_defacer(corpus.folder, out)}
            if args.jobs > 1:
                runs[f"defacer --jobs {args.jobs}"] = lambda out: run_defacer(corpus.folder, out, args.jobs)
            for name, body in RUNNERS.items():
                if not args.python.exists():
                    results[name] = {"error": f"{args.python} not found (see this script's docstring)"}
                    continue
                runs[name] = lambda out, body=body: run_other(args.python, body, corpus.folder, out)
            for name, run in runs.items():
                out = work / name.replace(" ", "_")
                shutil.rmtree(out, ignore_errors=True)
                result = run(out)
                best = results.get(name)
                if best is None or ("seconds" in result and result["seconds"] < best.get("seconds", float("inf"))):
                    results[name] = result
                if not last:
                    shutil.rmtree(out, ignore_errors=True)
        for name, result in results.items():
            if "error" in result:
                continue
            out = work / name.replace(" ", "_")
            phi_left, uids_left, which = count_leaks(out, corpus)
            result.update({"ms_per_file": 1000 * result["seconds"] / max(result["files"], 1),
                           "files_per_s": result["files"] / result["seconds"],
                           "phi_leaks": phi_left, "phi_planted": len(corpus.phi), "uid_leaks": uids_left,
                           "uids_planted": len(corpus.uids), "leaked": which[:40]})
        args.report.parent.mkdir(parents=True, exist_ok=True)
        import platform

        machine = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                   "repeat": args.repeat}
        args.report.write_text(json.dumps({"files": len(corpus.files), "machine": machine, "results": results},
                                          indent=2) + "\n")
        print(f"{len(corpus.files)} files, planted: {len(corpus.phi)} PHI strings and {len(corpus.uids)} UIDs")
        print(f"{'tool':<24}{'ms/file':>9}{'files/s':>9}{'PHI left':>10}{'UIDs left':>11}")
        for name, result in results.items():
            if "error" in result:
                print(f"{name:<24} error: {result['error']}")
                continue
            print(f"{name:<24}{result['ms_per_file']:>9.2f}{result['files_per_s']:>9.1f}"
                  f"{result['phi_leaks']:>6}/{result['phi_planted']:<3}{result['uid_leaks']:>7}/{result['uids_planted']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
