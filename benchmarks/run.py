"""promptkit side by side with the raw libraries and peers, measured in the same run.

    python benchmarks/run.py            # everything (make bench), about 30 minutes on 2 cores
    python benchmarks/run.py --smoke    # every benchmark on tiny inputs (run by make test)
    python benchmarks/run.py --only search,predict
    python benchmarks/run.py --only fit --full-fit   # fit on the whole train split: fit_full.json

Each timing is the median of several repetitions (min and max kept) and is reported as a ratio
against the baseline doing the same work in the same process. Results go to
benchmarks/results/<name>.json and benchmarks/results/table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from promptkit.evaluation.results import library_versions  # noqa: E402


def summarize(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Median, min and max wall seconds of ``fn`` over ``repeat`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return summarize(times)


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``'s result, wall seconds, and the peak resident memory (MB) sampled while it ran.

    The process-wide peak (``ru_maxrss``) only grows, so each run gets its own sampler thread,
    reading /proc every 20 ms: runs in one process get comparable peaks.
    """
    import threading

    if not os.path.exists("/proc/self/statm"):
        start = time.perf_counter()
        value = fn()
        return value, time.perf_counter() - start, peak_rss_mb()
    peak = [_rss_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        value = fn()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        thread.join()
    return value, seconds, max(peak[0], _rss_mb())


def ratio(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, float]:
    """ours / theirs for time (lower is better), median with the extremes."""
    return {"median": ours["median"] / theirs["median"], "best": ours["min"] / theirs["max"],
            "worst": ours["max"] / theirs["min"]}


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "libraries": library_versions()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny inputs; checks they run")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--full-fit", action="store_true",
                        help="fit on the whole train split (about 21 more minutes)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    from suites import SUITES

    chosen = [s for s in SUITES if not args.only or s in args.only.split(",")]
    out = Path(args.out if not args.smoke else tempfile.mkdtemp(prefix="promptkit-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in chosen:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        result = (SUITES[name](args.smoke, full=True) if name == "fit" and args.full_fit
                  else SUITES[name](args.smoke))
        result.update(seconds=round(time.perf_counter() - start, 1), machine=machine(),
                      smoke=args.smoke)
        file = "fit_full" if name == "fit" and args.full_fit else name
        (out / f"{file}.json").write_text(json.dumps(result, indent=2, default=str))
        results[name] = result
        print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1,
                         default=str)[:3000], flush=True)
    from table import write_table

    write_table(out)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
