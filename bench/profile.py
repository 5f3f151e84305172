"""`python -m bench.profile FILE.txt [--top N]`: read a py-spy profile recorded by
`python -m bench.run --profile DIR` (py-spy's "raw" format: one line per distinct stack, frames
joined by `;`, then the number of samples) and print where dicomvault's CPU time went: per
process (the server and each ingest worker), and the functions with the most samples, counted
inclusively (the function or anything it called) and by self time (the innermost frame).

The same files open as flame graphs in speedscope or with `flamegraph.pl`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_PROCESS = re.compile(r'process (\d+):"(.*?)";')
_THREAD = re.compile(r"^thread \(")


def parse(path: Path) -> list[tuple[str, list[str], int]]:
    """(process label, frames outermost first, samples) for every line of a raw py-spy profile."""
    stacks: list[tuple[str, list[str], int]] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        frames_text, _, count = line.rpartition(" ")
        process = "?"
        # With --subprocesses, the stack starts with the process chain (whose command lines may
        # hold ";"): keep its innermost member.
        while match := _PROCESS.match(frames_text):
            role = "ingest worker" if "multiprocessing" in match.group(2) else "server"
            process = f"{role} {match.group(1)}"
            frames_text = frames_text[match.end() :]
        frames = frames_text.split(";")
        if frames and _THREAD.match(frames[0]):
            process = f"{process}, {frames.pop(0)}"
        stacks.append((process, frames, int(count)))
    return stacks


def _short(frame: str) -> str:
    # "Class.method (package/module.py:123)" -> "Class.method (package/module.py)": lines apart.
    return re.sub(r":\d+\)$", ")", frame)


def summarize(stacks: list[tuple[str, list[str], int]], top: int) -> str:
    total = sum(n for _, _, n in stacks) or 1
    per_process: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for process, frames, n in stacks:
        per_process[process] += n
        short = [_short(f) for f in frames]
        for frame in set(short):
            inclusive[frame] += n
        if short:
            own[short[-1]] += n
    lines = [f"{total} samples (on CPU)", "", "by process:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in per_process.most_common()]
    lines += ["", f"top {top} functions, inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", f"top {top} functions, self:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="raw py-spy profiles (DIR/*.txt of bench.run --profile)")
    parser.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    args = parser.parse_args(argv)
    for path in args.files:
        print(f"== {path}")
        print(summarize(parse(path), args.top))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
