"""`python -m recolab select`: choose a configuration on validation, re-run it on fresh seeds, report test.

    python -m recolab select sweep=<sweep id> metric=val/auc/click seeds=5
    python -m recolab select exps=[mmoe,cgc,ple] metric=val/gauc/click seeds=5
    python -m recolab select sweep=<sweep id> metric=val/recall_at_50 rerun=false   # choose only

The protocol of DESIGN.md section 6: validation selects; test is read once per selected
configuration and never feeds a choice.

1. **Candidates**: complete training runs in MLflow: a sweep's (`sweep=`, its tag
   `recolab.sweep`: the name of its folder under `outputs/multiruns/`), or those `exps`, `filter`
   or `run_ids` name. Runs equal but for the seed keys form one configuration
   (`recolab.reports.compare.group_runs`; a seed run twice counts once, the newest).
2. **Choice**: each candidate run is read for `metric` alone, a `val/` metric, as its latest
   value, which `recolab.train` logs last as the validation value of the checkpoint the run
   tested. Every other metric of a run (its `test/...` ones among them) is dropped as the runs are
   fetched, before anything else sees them, so nothing but validation can enter the choice. The
   configuration with the best mean over its seeds wins (`mode`: `max` or `min`, by default from
   the metric's name, `recolab.run_checks.metric_direction`; a tie goes to the first label in
   alphabetical order); its difference from the runner-up is tested over seeds
   (`recolab.reports.stats.seed_difference`), so the record says whether the choice is clear or
   within noise.
3. **Re-run**: the winner's command line (its newest run's tag `recolab.overrides`, or
   `.hydra/overrides.yaml` in that run's folder; the seed, `hydra.*`, `ckpt_path` and the
   `hparams_search` group left out) runs again as one Hydra multirun over `seeds` seeds that no
   candidate used (a count takes the smallest such seeds; a list must avoid them), in the sweep
   folder `outputs/multiruns/select-<time>_<id>`, so the re-runs carry that name as their tag
   `recolab.sweep`. The re-runs must have the chosen configuration's params (but for the seed
   keys), or the selection fails naming the keys that differ.
4. **Report**: `recolab compare` over the re-runs (per metric: n, mean, std and the 95% t
   interval over seeds of `report_metrics`: `test/*`, `oracle/*` and the selection metric), and
   `selection.json` and `selection.md`: every candidate with its validation mean and interval,
   the choice and why, the seeds, the re-run command and its runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

from recolab import tracking
from recolab.compare import compare, fetch_runs
from recolab.compose import CONFIG_DIR
from recolab.lifecycle import RUN_ID
from recolab.reports import stats as S
from recolab.reports.compare import SEED_KEYS, Config, RunRecord, group_runs
from recolab.run_checks import metric_direction, selection_problem
from recolab.stacks import dump_stacks_on_signal

log = logging.getLogger(__name__)

#: Overrides of a chosen run that do not define its configuration (or would start a search).
NOT_CONFIG = ("seed", "hydra.", "hydra/", "hparams_search", "ckpt_path", "resume_inexact")
MAX_SEED = 2**32 - 1
OVERRIDES_TAG = "recolab.overrides"


class SelectionError(ValueError):
    """A selection that cannot be made as asked; the message names the key and what was expected."""


def _names(value: Any) -> list[str]:
    """`exps=mmoe` as `exps=[mmoe]`: a single name is a list of one."""
    if value is None:
        return []
    if isinstance(value, str | int):
        return [str(value)]
    return [str(v) for v in value]


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def check_request(cfg: DictConfig) -> str:
    """The metric's better side (`max` or `min`); `SelectionError` for a request that would not
    choose on validation, or names no candidates, before any run is read."""
    metric = OmegaConf.select(cfg, "metric", throw_on_missing=False)
    if not metric:
        raise SelectionError(
            "metric: expected the validation metric to choose on, e.g. metric=val/auc/click"
        )
    metric = str(metric)
    if problem := selection_problem("metric", metric):
        raise SelectionError(problem)
    if not metric.startswith("val/") or len(metric.split("/")) < 2:
        raise SelectionError(
            f"metric={metric!r}: expected a validation metric, val/metric[/task], e.g. "
            "'val/auc/click' or 'val/recall_at_50'"
        )
    mode = cfg.get("mode")
    if mode is None:
        mode = metric_direction(metric)
        if mode is None:
            raise SelectionError(
                f"metric={metric!r}: recolab does not know whether a higher or a lower value is "
                "better; expected mode=max or mode=min"
            )
    elif mode not in ("max", "min"):
        raise SelectionError(f"mode={mode!r}: expected max, min or null (from the metric's name)")
    if not (
        cfg.get("sweep") or _names(cfg.get("exps")) or cfg.get("filter") or _names(cfg.run_ids)
    ):
        raise SelectionError(
            "no candidates named: expected sweep=<id> (the sweep folder's name under "
            "outputs/multiruns/, the runs' tag recolab.sweep), exps=[...], filter=... or "
            "run_ids=[...]"
        )
    seeds = _plain(cfg.get("seeds"))
    if not (
        (_integer(seeds) and seeds >= 1)
        or (
            isinstance(seeds, list)
            and seeds
            and all(_integer(s) and 0 <= s <= MAX_SEED for s in seeds)
        )
    ):
        raise SelectionError(
            f"seeds={seeds!r}: expected the number of fresh seeds to re-run the choice on "
            f"(an integer >= 1), or a list of seeds in 0..{MAX_SEED}"
        )
    return mode


def _integer(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _sweep_clause(sweep: str) -> str:
    if "'" in sweep:
        raise SelectionError(f"sweep={sweep!r}: expected a sweep folder's name (no quotes)")
    return f"tags.`recolab.sweep` = '{sweep}'"


def _query(cfg: DictConfig, **given: Any) -> DictConfig:
    """The node `recolab.compare.fetch_runs` reads."""
    clauses = [str(cfg.filter)] if cfg.get("filter") else []
    if cfg.get("sweep"):
        clauses.append(_sweep_clause(str(cfg.sweep)))
    node = {
        "tracking_uri": cfg.tracking_uri,
        "experiment_name": cfg.experiment_name,
        "run_ids": _names(cfg.run_ids),
        "exps": _names(cfg.get("exps")),
        "kind": "train",
        "filter": " and ".join(clauses),
        "max_runs": int(cfg.max_runs),
    }
    return OmegaConf.create(node | given)


def describe_source(cfg: DictConfig) -> str:
    parts = [f"{cfg.tracking_uri}, experiment {cfg.experiment_name!r}"]
    for key in ("sweep", "exps", "filter", "run_ids"):
        if value := _plain(cfg.get(key)):
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def validation_only(runs: list[RunRecord], metric: str) -> tuple[list[RunRecord], list[str]]:
    """Each run with `metric` alone: every other metric (`test/...` among them) is dropped here,
    so the choice cannot read it. Runs without a value of `metric` are left out, with a note."""
    kept, notes = [], []
    for r in runs:
        value = r.metrics.get(metric)
        if value is None or math.isnan(value):
            notes.append(f"run {r.run_id} ({r.name}) left out: it has no value of {metric}")
            continue
        kept.append(
            RunRecord(
                r.run_id, r.name, dict(r.params), {metric: float(value)}, r.start_time, r.tags
            )
        )
    return kept, notes


def rank_configurations(
    runs: list[RunRecord], metric: str, mode: str, seed_keys: tuple[str, ...] = SEED_KEYS
) -> list[tuple[Config, S.Summary]]:
    """The configurations with their summary of `metric` over seeds, the best mean first."""
    found = [
        (c, S.t_summary(np.array(list(c.values(metric).values()), dtype=float)))
        for c in group_runs(runs, seed_keys).configs
    ]
    sign = -1.0 if mode == "max" else 1.0
    return sorted(found, key=lambda cs: (sign * cs[1].mean, cs[0].label))


def job_overrides(run: RunRecord) -> list[str]:
    """The command-line overrides the run was started with: its tag `recolab.overrides` (set by
    `recolab.train`), or `.hydra/overrides.yaml` in its folder (tag `recolab.output_dir`)."""
    if OVERRIDES_TAG in run.tags:
        return [str(o) for o in json.loads(run.tags[OVERRIDES_TAG])]
    folder = run.tags.get("recolab.output_dir")
    path = Path(folder) / ".hydra" / "overrides.yaml" if folder else None
    if path is not None and path.is_file():
        return [str(o) for o in yaml.safe_load(path.read_text()) or []]
    raise SelectionError(
        f"run {run.run_id} ({run.name}) records no command line (no tag {OVERRIDES_TAG}, no "
        f"{path or '<run folder>/.hydra/overrides.yaml'}): re-run its configuration by hand on "
        "fresh seeds and compare the runs (python -m recolab compare)"
    )


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def rerun_overrides(run: RunRecord) -> list[str]:
    """The overrides that make the run's configuration again, less those in `NOT_CONFIG`."""
    kept = [o for o in job_overrides(run) if not _key(o).startswith(NOT_CONFIG)]
    # An optimized_metric that the left-out search group set stays, so the params stay the same.
    metric = run.params.get("optimized_metric")
    if metric not in (None, "None") and not any(_key(o) == "optimized_metric" for o in kept):
        kept.append(f"++optimized_metric={metric}")
    return kept


def fresh_seeds(requested: Any, used: set[str]) -> list[int]:
    """`requested` as seeds no candidate used: a count takes the smallest; a list is checked."""
    if isinstance(requested, int):
        seeds, s = [], 0
        while len(seeds) < requested:
            if str(s) not in used:
                seeds.append(s)
            s += 1
        return seeds
    seeds = [int(s) for s in requested]
    clash = sorted({s for s in seeds if str(s) in used})
    if clash:
        raise SelectionError(
            f"seeds={seeds}: seed(s) {clash} already ran among the candidates (their seeds: "
            f"{', '.join(sorted(used, key=lambda x: (len(x), x)))}); the re-runs need seeds the "
            "choice did not see: expected other seeds, or a count (seeds=5) to take fresh ones"
        )
    if len(set(seeds)) != len(seeds):
        raise SelectionError(f"seeds={seeds}: expected each seed once")
    return seeds


def run_again(
    overrides: list[str], seeds: list[int], *, root: Path, sweep_dir: Path, tracking_uri: str
) -> list[str]:
    """Run `overrides` as one Hydra multirun over `seeds` in `sweep_dir`; return the command."""
    command = [
        sys.executable,
        "-m",
        "recolab",
        "train",
        "-m",
        *overrides,
        "seed=" + ",".join(map(str, seeds)),
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = dict(os.environ)
    if tracking_uri != tracking.tracking_uri(str(root)):
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    log.info("re-running the chosen configuration: %s", " ".join(command[1:]))
    done = subprocess.run(command, cwd=root, env=env, check=False)
    if done.returncode != 0:
        raise SelectionError(
            f"the re-runs failed (exit {done.returncode}); the command, in {root}: "
            f"{' '.join(command[1:])}"
        )
    return command


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and math.isnan(x) else x


def choose(cfg: DictConfig) -> tuple[dict[str, Any], Config, list[RunRecord]]:
    """The choice (selection.json's content without the re-runs), the chosen configuration, and
    the candidate runs, each reduced to the selection metric (`validation_only`)."""
    mode = check_request(cfg)
    metric = str(cfg.metric)
    tracking.check_reachable(cfg.tracking_uri)
    fetched = fetch_runs(_query(cfg))
    if not fetched:
        raise SelectionError(
            f"no complete training run matches ({describe_source(cfg)}): check sweep=, exps=, "
            "filter= or run_ids="
        )
    runs, notes = validation_only(fetched, metric)
    if not runs:
        logged = sorted({m for r in fetched for m in r.metrics if m.startswith("val/")})
        raise SelectionError(
            f"metric={metric!r}: none of the {len(fetched)} candidate runs logged it; they log "
            f"{', '.join(logged) or 'no val/ metric'}"
        )
    used = sorted({r.params.get("seed", "") for r in fetched}, key=lambda x: (len(x), x))
    del fetched  # nothing below may read the runs' other metrics
    seed_keys = tuple(cfg.seed_keys) if cfg.get("seed_keys") else SEED_KEYS
    ranked = rank_configurations(runs, metric, mode, seed_keys)
    best, summary = ranked[0]
    reason = (
        f"the {'highest' if mode == 'max' else 'lowest'} mean {metric} over its seeds "
        f"({summary.mean:.4f}, {summary.n} seed(s)) among {len(ranked)} configuration(s)"
    )
    runner_up = None
    if len(ranked) > 1:
        other = ranked[1][0]
        d = S.seed_difference(best.values(metric), other.values(metric))
        noise = S.within_noise(d.ci_low, d.ci_high)
        diff = summary.mean - ranked[1][1].mean  # the difference of the means, tested or not
        runner_up = {
            "config": other.label,
            "mean": _finite(ranked[1][1].mean),
            "diff": diff,
            "diff_ci_low": _finite(d.ci_low),
            "diff_ci_high": _finite(d.ci_high),
            "p_value": _finite(d.p_value),
            "method": d.method,
            "within_noise": noise,
        }
        verdict = {
            True: "within noise: more seeds per configuration would tell them apart better",
            False: "a margin beyond seed noise",
            None: "not tested: fewer than two seeds on a side",
        }[noise]
        reason += f"; ahead of {other.label} by {diff:+.4f} ({d.method}: {verdict})"
    result = {
        "metric": metric,
        "mode": mode,
        "source": describe_source(cfg),
        "metrics_read_for_the_choice": [metric],
        "candidates": [
            {
                "config": c.label,
                "params": c.params,
                **{k: _finite(v) for k, v in asdict(s).items()},
                "runs": [
                    {"run_id": r.run_id, "seed": seed, "value": r.metrics[metric]}
                    for seed, r in c.runs.items()
                ],
            }
            for c, s in ranked
        ],
        "chosen": {
            "config": best.label,
            "params": best.params,
            "run_ids": [r.run_id for r in best.runs.values()],
        },
        "reason": reason,
        "runner_up": runner_up,
        "candidate_seeds": used,
        "notes": notes,
    }
    return result, best, runs


def select(cfg: DictConfig) -> dict[str, Any]:
    """Choose on validation, re-run the choice on fresh seeds, compare the re-runs; write
    `selection.json` and `selection.md` under `cfg.out_dir` and return the former's content."""
    result, best, _ = choose(cfg)
    seeds = fresh_seeds(_plain(cfg.seeds), set(result["candidate_seeds"]))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result["rerun"] = None
    if cfg.rerun:
        newest = max(best.runs.values(), key=lambda r: r.start_time)
        overrides = rerun_overrides(newest)
        root = Path(cfg.paths.root_dir)
        name = f"select-{datetime.now():%Y-%m-%d_%H-%M-%S}_{RUN_ID}"
        command = run_again(
            overrides,
            seeds,
            root=root,
            sweep_dir=Path(cfg.paths.log_dir) / "multiruns" / name,
            tracking_uri=cfg.tracking_uri,
        )
        experiment = newest.params.get("experiment_name") or cfg.experiment_name
        query = _query(
            cfg, experiment_name=experiment, exps=[], run_ids=[], filter=_sweep_clause(name)
        )
        reruns = fetch_runs(query)
        grouping = group_runs(
            list(best.runs.values()) + reruns,
            tuple(cfg.seed_keys) if cfg.get("seed_keys") else SEED_KEYS,
        )
        result["rerun"] = {
            "seeds": seeds,
            "sweep": name,
            "command": ["python", *command[1:]],
            "run_ids": [r.run_id for r in reruns],
            "comparison": str(out / "comparison.md"),
        }
        problem = None
        if len(reruns) != len(seeds):
            problem = f"{len(reruns)} complete re-run(s) in sweep {name}, {len(seeds)} expected"
        elif len(grouping.configs) != 1:
            problem = (
                f"the re-runs' params differ from the chosen configuration's in "
                f"{', '.join(grouping.differing)}: the command line did not make it again"
            )
        if problem is None:
            compare(
                OmegaConf.merge(
                    query,
                    {
                        "metrics": list(cfg.report_metrics),
                        "seed_keys": list(cfg.seed_keys or SEED_KEYS),
                        "baseline": None,
                        "bootstrap_samples": int(cfg.bootstrap_samples),
                        "bootstrap_seed": int(cfg.bootstrap_seed),
                        "title": f"{cfg.title}: {best.label} re-run on seeds {seeds}",
                        "out_dir": str(out),
                    },
                )
            )
            result["rerun"]["results"] = _rerun_results(out / "comparison.json")
        write_selection(result, out)
        if problem is not None:
            raise SelectionError(f"{problem} (selection written to {out})")
    else:
        result["seeds_to_run"] = seeds
        write_selection(result, out)
    return result


def _rerun_results(path: Path) -> list[dict[str, Any]]:
    """Per metric of the comparison of the re-runs: n, mean, std and the 95% interval."""
    records = json.loads(path.read_text())["records"]
    keys = ("metric", "n", "mean", "std", "ci_low", "ci_high")
    return [{k: r[k] for k in keys} for r in records]


def _num(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def write_selection(result: dict[str, Any], out: Path) -> list[Path]:
    """`selection.json` (the whole record) and `selection.md` (the same, to read)."""
    paths = [out / "selection.json", out / "selection.md"]
    paths[0].write_text(json.dumps(result, indent=2, allow_nan=False, default=str))
    metric = result["metric"]
    md = [
        "# recolab selection",
        "",
        f"Candidates: {result['source']}. Chosen on `{metric}` ({result['mode']}), the only "
        "metric read for the choice: each run's validation value of the checkpoint it tested.",
        "",
        f"**Chosen: {result['chosen']['config']}**: {result['reason']}.",
        "",
        f"| configuration | n | mean {metric} | std | 95% CI (t, seeds) |",
        "|---|---|---|---|---|",
    ]
    for c in result["candidates"]:
        interval = "-" if c["ci_low"] is None else f"[{_num(c['ci_low'])}, {_num(c['ci_high'])}]"
        md.append(
            f"| {c['config']} | {c['n']} | {_num(c['mean'])} | {_num(c['std'])} | {interval} |"
        )
    md.append("")
    rerun = result.get("rerun")
    if rerun:
        md += [
            f"## Re-run on fresh seeds {rerun['seeds']}",
            "",
            f"Sweep `{rerun['sweep']}` (tag recolab.sweep), runs {', '.join(rerun['run_ids'])}:",
            "",
            "    " + " ".join(rerun["command"]),
            "",
        ]
        if rerun.get("results"):
            md += ["| metric | n | mean | std | 95% CI (t, seeds) |", "|---|---|---|---|---|"]
            for r in rerun["results"]:
                interval = (
                    "-" if r["ci_low"] is None else f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
                )
                md.append(
                    f"| {r['metric']} | {r['n']} | {_num(r['mean'])} | {_num(r['std'])} | "
                    f"{interval} |"
                )
            md += [
                "",
                "The full comparison: `comparison.md` (and .html, .json) beside this file.",
                "",
            ]
    elif result.get("seeds_to_run"):
        md += [f"Not re-run (rerun=false); fresh seeds for it: {result['seeds_to_run']}.", ""]
    if result["notes"]:
        md += ["## Notes", "", *[f"- {n}" for n in result["notes"]], ""]
    paths[1].write_text("\n".join(md))
    print(paths[1].read_text())
    print("written:", *map(str, paths))
    return paths


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="select")
def main(cfg: DictConfig) -> None:
    select(cfg)


if __name__ == "__main__":
    dump_stacks_on_signal()
    main()
