"""The top frames of a py-spy ``--format raw`` profile (collapsed stacks), by own and by
inclusive samples, and the samples per thread: a terminal summary of what
``bench.hub_loopback --py-spy DIR`` records.

    python -m bench.pyspy_top var/prof/ct-hub.txt [TOP]
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


def summarize(path: Path, top: int = 25) -> str:
    """The summary of one collapsed-stack file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        thread, *frames = stack.split(";")
        threads[re.sub(r"[-\d]+$", "", thread.split(": ", 1)[-1])] += samples
        frames = frames or ["(no Python frame)"]
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return f"{path}: no samples"
    lines = [f"{path}: {total} samples; threads " + ", ".join(
        f"{name} {n}" for name, n in threads.most_common(8))]  # fmt: skip
    for title, counter in (("own", own), ("inclusive", inclusive)):
        lines.append(f"-- {title}")
        lines += [f"{100 * n / total:5.1f}% {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary of the file named first, with the TOP most frequent frames."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    print(summarize(Path(args[0]), int(args[1]) if len(args) > 1 else 25))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
