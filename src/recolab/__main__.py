"""`python -m recolab <task> [hydra overrides]`: run a task module as `__main__`.

The task runs through `runpy` as a real module run (not by importing and calling `main()`), so
that Lightning's DDP launcher, which restarts each rank as `python -m <__main__.__spec__.name>
<argv[1:]>`, re-enters the same task module with the same overrides.
"""

from __future__ import annotations

import runpy
import sys

TASKS = {
    "train": "recolab.train",
    "evaluate": "recolab.evaluate",
    "compare": "recolab.compare",
    "data": "recolab.data.cli",
    "sync": "recolab.sync",  # record in MLflow what a run could not (its server was down)
}

USAGE = "usage: python -m recolab {" + ",".join(TASKS) + "} [key=value ...]"


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        got = sys.argv[1] if len(sys.argv) > 1 else "nothing"
        sys.exit(f"{USAGE}\n(got {got!r})")
    module = TASKS[sys.argv.pop(1)]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
