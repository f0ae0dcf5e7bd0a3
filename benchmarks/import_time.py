"""How long `import cgoom` takes, from `python -X importtime` (target: under 60 ms).

    python benchmarks/import_time.py [--runs N] [--json]

Runs N fresh interpreters, takes cgoom's cumulative import time from each, and reports the
median and the spread; also checks that pyroute2 and asyncio are not imported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


def one_run() -> tuple[float, set[str]]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import cgoom"],
        capture_output=True, text=True, check=True,
    )
    total_us = None
    modules = set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
        modules.add(name.strip())
        if name.strip() == "cgoom":
            total_us = int(cumulative)
    if total_us is None:
        raise RuntimeError("no 'cgoom' line in -X importtime output")
    return total_us / 1000, modules


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    times, heavy = [], set()
    for _ in range(args.runs):
        ms, modules = one_run()
        times.append(ms)
        heavy |= {m for m in modules if m.split(".")[0] in ("pyroute2", "asyncio", "cachetools")}
    result = {
        "runs": args.runs,
        "median_ms": round(statistics.median(times), 1),
        "min_ms": round(min(times), 1),
        "max_ms": round(max(times), 1),
        "target_ms": 60,
        "heavy_modules_imported": sorted(heavy),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"import cgoom: median {result['median_ms']} ms over {args.runs} runs "
              f"(min {result['min_ms']}, max {result['max_ms']}; target < 60 ms)")
        print(f"pyroute2/asyncio/cachetools imported: {sorted(heavy) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
