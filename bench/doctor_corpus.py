"""Run the doctor over every file of a folder and count its findings per rule and severity.

For reviewing the doctor's precision on real checkpoints (docs/fidelity.md, *Doctor precision on real checkpoints*): every file
weightkit opens is checked; files it refuses or cannot read are listed with their one-line error.

    python bench/doctor_corpus.py /work/corpus/files            # counts per rule and severity
    python bench/doctor_corpus.py /work/corpus/files --list     # plus every warning and error
    python bench/doctor_corpus.py /work/corpus/files --json out.json

Counts are given twice: as findings (one per row the doctor prints, a grouped row counted once)
and as occurrences (a grouped row counted once per tensor group it stands for).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import weightkit
from weightkit.errors import WeightkitError


def occurrences(finding) -> int:
    """How many separate findings a grouped row stands for (1 for an ungrouped one)."""
    return int(finding.details.get("count", 1)) if finding.details.get("grouped") else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--list", action="store_true", help="print every warning and error")
    ap.add_argument("--json", type=Path, help="write every file's findings to this JSON file")
    args = ap.parse_args()

    rows: Counter = Counter()  # (rule, severity) -> findings (printed rows)
    occ: Counter = Counter()  # (rule, severity) -> occurrences before grouping
    out: dict[str, object] = {}
    opened = refused = 0
    t0 = time.perf_counter()
    for path in sorted(p for p in args.folder.rglob("*") if p.is_file()):
        rel = str(path.relative_to(args.folder))
        try:
            report = weightkit.doctor(path)
        except WeightkitError as e:
            refused += 1
            out[rel] = {"error": str(e)}
            continue
        opened += 1
        out[rel] = report.to_dict()
        for f in report.findings:
            rows[f.rule, f.severity] += 1
            occ[f.rule, f.severity] += occurrences(f)
            if args.list and f.severity != "info":
                print(f"{rel}\t{f.severity}\t{f.rule}\t{f.message}")
    print(f"{opened} files checked, {refused} not opened, {time.perf_counter() - t0:.1f} s")
    print(f"{'rule':<28}{'severity':<10}{'rows':>6}{'occurrences':>13}")
    for (rule_id, severity), n in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{rule_id:<28}{severity:<10}{n:>6}{occ[rule_id, severity]:>13}")
    for severity in ("error", "warning", "info"):
        n = sum(v for (_, s), v in rows.items() if s == severity)
        o = sum(v for (_, s), v in occ.items() if s == severity)
        print(f"{'total':<28}{severity:<10}{n:>6}{o:>13}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
