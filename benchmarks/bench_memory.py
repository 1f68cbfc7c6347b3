"""Peak memory of training at 1M and 10M rows: the in-memory data module against streaming.

    python benchmarks/bench_memory.py [--sizes 1000000 10000000] [--steps 50]

Each configuration is one `python -m recolab train +exp=mmoe data.num_impressions=N [data=
synthetic_video_streaming]` process (`_runs.run_recolab`), limited to `--steps` training steps,
2 validation and 2 test batches; its peak resident set (`resource.getrusage`, RUSAGE_SELF) and
that of its reaped children (the streaming module's DataLoader worker) are read at its end. The
worlds and the streaming folders are generated first, in a separate process, so generation is
not counted. The streaming module still makes its full pass over the data (validation, counts,
vocabularies) in the measured process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from _common import write
from _runs import HERE, load_note, run_recolab

PREPARE = """
import sys
from recolab.data.streaming import SyntheticVideoStreamingDataModule
SyntheticVideoStreamingDataModule(cache_dir=sys.argv[1], num_impressions=int(sys.argv[2]), sparse=["user_id"],
                                  tasks=[{"name": "click"}]).prepare_data()
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    for n in args.sizes:  # generate each world and its parquet folder outside the measured runs
        subprocess.run(
            [sys.executable, "-c", PREPARE, str(HERE.parent / "data" / "synthetic"), str(n)],
            check=True,
        )

    limits = [
        "trainer.max_epochs=1",
        f"+trainer.limit_train_batches={args.steps}",
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
    ]
    rows, peaks = [], {}
    for n in args.sizes:
        for mode, data in (("in memory", []), ("streaming", ["data=synthetic_video_streaming"])):
            rec = run_recolab(
                ["+exp=mmoe", *data, f"data.num_impressions={n}", *limits], threads=args.threads
            )
            peaks[mode, n] = rec["maxrss_mib"]
            rows.append(
                f"| {n:,} | {mode} | {rec['maxrss_mib']:,.0f} | {rec['maxrss_children_mib']:,.0f} |"
            )
    growth = []
    if len(args.sizes) == 2:
        a, b = args.sizes
        for mode in ("in memory", "streaming"):
            growth.append(f"| {mode} | {peaks[mode, b] / peaks[mode, a]:.2f}x |")
    body = f"""`python -m recolab train +exp=mmoe data.num_impressions=N` (in memory) and the same with
`data=synthetic_video_streaming` (row groups of 100,000 rows, files of 1,000,000 rows, a shuffle
buffer of 100,000 rows, 1 loader worker); {args.steps} training steps of 2,048 rows, 2 validation
and 2 test batches; {args.threads} torch thread(s); {load_note()}.

| impressions | data | peak RSS of the training process, MiB | peak RSS of its loader worker, MiB |
|---:|---|---:|---:|
{chr(10).join(rows)}

Peak memory at {args.sizes[-1]:,} rows over the peak at {args.sizes[0]:,} rows:

| data | ratio |
|---|---:|
{chr(10).join(growth)}

The in-memory module holds every split as column tensors (and, while reading, the Arrow table);
the streaming module holds a row group and the shuffle buffer per worker, plus the vocabularies.
The worker is a fork of the training process: its resident set counts pages it shares with it.
"""
    write("memory", "Peak memory of training: in memory against streaming", body)


if __name__ == "__main__":
    main()
