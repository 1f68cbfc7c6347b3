"""`make bench`: every benchmark, one after another; each writes experiments/bench/<name>.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["bench_metrics.py"],
    ["bench_train.py"],
    ["bench_speed.py"],
    ["bench_flops.py"],
    ["bench_headroom.py"],
    ["bench_ddp.py"],
    ["bench_memory.py"],
    ["bench_vs_rechub.py", "--precisions", "bf16-mixed"],
    ["bench_recall.py"],
]


def main() -> None:
    failed = []
    for args in BENCHES:
        if not (HERE / args[0]).exists():
            continue
        print(f"== {' '.join(args)}", flush=True)
        if subprocess.run(
            [sys.executable, str(HERE / args[0]), *args[1:]], cwd=HERE.parent
        ).returncode:
            failed.append(args[0])
    if failed:
        sys.exit(f"failed: {failed}")


if __name__ == "__main__":
    main()
