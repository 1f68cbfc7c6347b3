"""Input batch normalization (`model.embedding.batch_norm`) for every synthetic-world ranker, and
for MMoE on Census-Income.

`python experiments/multitask/input_norm.py` trains each ranker experiment (`+exp=mmoe`, `cgc`,
`ple`, `shared_bottom`, `single_task`) with the input normalization off and on, over seeds,
with the bench_vs_rechub.py budget (1,000,000 impressions, 200 steps of 2,048 rows, test AUC on
131,072 rows), and `+exp=mmoe_census_bench` (3 epochs) the same way; it writes
experiments/multitask/input_norm.md. Two runs at a time, one torch thread each; the test
metrics come from each run's report/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SYNTHETIC = [
    "data.num_impressions=1000000",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=200",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=4",
]
SYNTHETIC_METRICS = ["test/auc/click", "test/auc/like", "test/xauc/watch_time"]
# experiment -> (its overrides, the metrics reported)
EXPS = {
    **{
        e: (SYNTHETIC, SYNTHETIC_METRICS)
        for e in ["mmoe", "cgc", "ple", "shared_bottom", "single_task"]
    },
    "mmoe_census_bench": (["trainer.max_epochs=3"], ["test/auc/income", "test/auc/never_married"]),
}


def run(exp: str, norm: bool, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="recolab-input-norm-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "recolab",
            "train",
            f"+exp={exp}",
            *EXPS[exp][0],
            f"model.embedding.batch_norm={str(norm).lower()}",
            f"seed={seed}",
            "logger=none",
            f"paths.data_dir={ROOT / 'data'}",
            f"hydra.run.dir={tmp}",
            "~callbacks.progress_bar",
            "+trainer.enable_progress_bar=false",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
        return json.loads((Path(tmp) / "report" / "metrics.json").read_text())["metrics"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    # The data are generated (and cached under data/) by the first run; the rest read the cache.
    run("mmoe", False, 0)
    jobs = [(e, n, s) for e in EXPS for n in (False, True) for s in range(args.seeds)]
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(jobs, pool.map(lambda j: run(*j), jobs)))
    rows = [
        "| experiment | metric | input_batch_norm=false | true | true - false (paired) |",
        "|---|---|---|---|---|",
    ]
    for e, (_, metrics) in EXPS.items():
        for m in metrics:
            off = np.array([results[(e, False, s)][m] for s in range(args.seeds)])
            on = np.array([results[(e, True, s)][m] for s in range(args.seeds)])
            d = on - off
            rows.append(
                f"| `+exp={e}` | {m} | {off.mean():.4f} +- {off.std(ddof=1):.4f} "
                f"| {on.mean():.4f} +- {on.std(ddof=1):.4f} | {d.mean():+.4f} +- {d.std(ddof=1):.4f} |"
            )
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""# Input batch normalization in the rankers

- command: `python experiments/multitask/input_norm.py --seeds {args.seeds}`
- date: {date}

Each ranker experiment trained with `model.embedding.batch_norm=false` and `true` (one BatchNorm1d
over the concatenated embeddings and dense values, `recolab.models.blocks.FeatureEmbedding`),
seeds 0 to {args.seeds - 1} (initialization and batch order), on the synthetic world at
1,000,000 impressions for 200 steps of 2,048 rows (the budget of
`benchmarks/bench_vs_rechub.py`), test metrics on 131,072 rows, and MMoE on Census-Income
(`+exp=mmoe_census_bench`, 3 epochs); mean +- standard deviation over seeds, and the paired
difference. The synthetic-world experiments' configs turn it on (`configs/exp/`); Census-Income's
leave it off.

{chr(10).join(rows)}
"""
    (HERE / "input_norm.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
