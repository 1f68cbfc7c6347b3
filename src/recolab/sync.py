"""`python -m recolab sync <run folder> [<run folder> ...]`: record in MLflow what a run could not.

A run whose tracking server stopped answering kept the metrics, report and status it could not
send in `<run folder>/unlogged_tracking.jsonl` (`recolab.lifecycle`); once the server answers
again, this sends them to the run (to `MLFLOW_TRACKING_URI` where set, else to the server the run
used) and renames the file `unlogged_tracking.jsonl.synced`.
"""

from __future__ import annotations

import sys

from recolab.run_logger import replay_unlogged

USAGE = "usage: python -m recolab sync <run folder> [<run folder> ...]"


def main(argv: list[str]) -> int:
    if not argv or any(a.startswith("-") for a in argv):
        print(USAGE, file=sys.stderr)
        return 2
    for folder in argv:
        print(replay_unlogged(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
