"""Where the CPU goes while N interval schedules fire together each second: self-time hot spots.

    python bench/hotspots.py [--target ours|aps4] [--backend asyncio|trio] [--n 1000]
                            [--window 10] [--tool py-spy|cprofile] [--top 15]

Runs the same ``fires`` measurement as ``run.py`` in a subprocess and samples it only during the
measuring window: with py-spy (``pip install py-spy``; sampling, little distortion, idle time
left out) or with cProfile (deterministic, inflates code that makes many small calls).
"""

from __future__ import annotations

import argparse
import json
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import BOUNDARY_LEAD, aligned_start, seconds_until

BENCH = Path(__file__).resolve().parent
WORKER = BENCH / "_aps4_worker.py"
IDLE_CALLS = {"<method 'poll' of 'select.epoll' objects>"}
STDLIB_OR_SITE = re.compile(r"^.*/(site-packages|lib/python3\.\d+)/")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def package_of(location: str) -> str:
    """``anyio/_backends/_asyncio.py:123`` -> ``anyio``; our package -> ``task_scheduler``."""
    path = location.rsplit(":", 1)[0]
    if "task_scheduler" in path:
        return "task_scheduler"
    if path.startswith(("<attrs generated", "attr/")):
        return "attrs"
    if path.startswith("<frozen "):
        return path[len("<frozen ") :].split(".", 1)[0]
    head = path.split("/", 1)[0]
    return head.removesuffix(".py")


def parse_raw(text: str) -> tuple[Counter[str], Counter[str]]:
    """Self and inclusive samples per frame of py-spy's raw (collapsed stack) output."""
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = stack.split(";")
            leaves[frames[-1]] += int(count)
            for frame in set(frames):
                inclusive[frame] += int(count)
    return leaves, inclusive


def table(counts: Counter[str], total: int, top: int, what: str) -> None:
    print(f"| {what} % | function (file:line) |")
    print("|---:|---|")
    for frame, samples in counts.most_common(top):
        print(f"| {100 * samples / total:.1f} | `{frame}` |")


def report(leaves: Counter[str], inclusive: Counter[str], top: int, title: str) -> None:
    total = sum(leaves.values())
    print(f"{title}: {total:,}\n")
    table(leaves, total, top, "self")
    packages: Counter[str] = Counter()
    for frame, samples in leaves.items():
        location = frame[frame.rfind("(") + 1 : -1] if frame.endswith(")") else frame
        packages[package_of(location)] += samples
    shares = ", ".join(f"{name} {100 * n / total:.0f} %" for name, n in packages.most_common(10))
    print(f"\nself time by package: {shares}\n")
    if inclusive:
        below_root = Counter({f: n for f, n in inclusive.items() if n < 0.99 * total})
        table(below_root, total, top, "inclusive")


def with_py_spy(
    py_spy: str, params: dict[str, object], rate: int, keep: Path | None
) -> tuple[Counter[str], Counter[str]]:
    t0 = float(params["t0"])  # type: ignore[arg-type]
    warmup, window = int(params["warmup"]), int(params["window"])  # type: ignore[call-overload]
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(params)], stdout=subprocess.PIPE, text=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        time.sleep(seconds_until(t0 + warmup - BOUNDARY_LEAD))
        subprocess.run(
            [py_spy, "record", "--pid", str(worker.pid), "--duration", str(window), "--rate",
             str(rate), "--function", "--format", "raw", "--output", str(raw)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = worker.communicate()
        print_result(out)
        text = raw.read_text()
    if keep is not None:
        keep.write_text(text)
    return parse_raw(text)


def with_cprofile(params: dict[str, object]) -> tuple[Counter[str], Counter[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.pstats"
        params = {**params, "cprofile": str(path)}
        done = subprocess.run(
            [sys.executable, str(WORKER), json.dumps(params)],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        print_result(done.stdout)
        stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    leaves: Counter[str] = Counter()
    for (filename, line, name), (_, _, tottime, _, _) in stats.items():
        if name in IDLE_CALLS:
            continue  # waiting for the next fire, not CPU
        location = "builtin" if filename == "~" else STDLIB_OR_SITE.sub("", filename)
        leaves[f"{name} ({location}:{line})"] += round(tottime * 1e6)
    return leaves, Counter()


def print_result(stdout: str) -> None:
    result = json.loads(stdout.strip().splitlines()[-1])
    print(
        f"window: {result['fired']} runs, {result['cpu_us_per_run']:.1f} µs CPU per run, "
        f"p99 lateness {result['lateness_p99_ms']:.1f} ms, process busy "
        f"{100 * result['cpu_share']:.0f} % of one core\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["ours", "aps4"], default="ours")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--n", type=int, default=1000, help="schedules firing each second")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--tool", choices=["py-spy", "cprofile"], default="py-spy")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--raw", type=Path, help="keep py-spy's collapsed stacks (flamegraph input)"
    )
    args = parser.parse_args()

    params: dict[str, object] = {
        "target": args.target,
        "backend": args.backend,
        "metric": "fires",
        "n": args.n,
        "warmup": args.warmup,
        "window": args.window,
        "t0": aligned_start(lead=3),
    }
    title = f"{args.target} on {args.backend}, N={args.n}, {args.tool}"
    if args.tool == "py-spy":
        py_spy = find_py_spy()
        if py_spy is None:
            sys.exit("py-spy not found: pip install py-spy, or use --tool cprofile")
        leaves, inclusive = with_py_spy(py_spy, params, args.rate, args.raw)
        title += ", busy samples"
    else:
        leaves, inclusive = with_cprofile(params)
        title += ", µs of tottime (idle epoll wait left out)"
    report(leaves, inclusive, args.top, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
