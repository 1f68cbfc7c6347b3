"""Config validation: misspelled keys, wrong types and impossible values fail before any data is read,
naming the full key, the value and what was expected."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict

from recolab.config_validation import ConfigError, top_level_keys, validate_config
from recolab.train import train
from tests.conftest import CONFIGS, TINY_WORLD, compose_train

KNOWN = top_level_keys(CONFIGS, "train")
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "exp").glob("*.yaml"))


@pytest.fixture(scope="module")
def mmoe(tmp_path_factory: pytest.TempPathFactory) -> DictConfig:
    return compose_train(tmp_path_factory.mktemp("cfg"), ["+exp=mmoe", *TINY_WORLD])


def with_value(cfg: DictConfig, key: str, value: object) -> DictConfig:
    cfg = cfg.copy()
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def problems(cfg: DictConfig) -> str:
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, known_top_level=KNOWN)
    return str(e.value)


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_experiment_config_is_valid(exp: str, tmp_path: Path) -> None:
    validate_config(compose_train(tmp_path, [f"+exp={exp}"]), known_top_level=KNOWN)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.num_experts=abc"], "model.num_experts='abc': expected an integer, got str"),
        (["model.num_experts=[2,3]"], "model.num_experts=[2, 3]: expected an integer, got a list"),
        (["model.num_experts=0"], "model.num_experts=0: expected a number >= 1"),
        (["module.lr=-0.01"], "module.lr=-0.01: expected a number > 0"),
        (["model.dropout=1.0"], "model.dropout=1.0: expected a number < 1"),
        (["model.expert_dims=64"], "model.expert_dims=64: expected a list, got int"),
        (
            ["model.expert_dims=[64,0]"],
            "model.expert_dims[1]=0: expected a number >= 1",
        ),
        (["data.batch_size=0"], "data.batch_size=0: expected a number >= 1"),
        (
            ["data.split.fractions=[0.8,0.1,0.2]"],
            "data.split.fractions=[0.8, 0.1, 0.2]: expected 3 non-negative numbers (train, val, test) summing to 1",
        ),
        (
            ["data.split.kind=timestamp"],
            "data.split.kind='timestamp': expected one of 'time', 'random' or 'column'",
        ),
        (
            ["data.tasks=[{name: click, kind: binry}]"],
            "data.tasks[0].kind='binry': expected one of 'binary' or 'regression'",
        ),
        (
            ["data.tasks=[{name: click, wieght: 2}]"],
            "data.tasks[0].wieght: unknown key for Task; did you mean 'weight'?",
        ),
        (
            ["trainer.max_epochs=0"],
            "trainer.max_epochs=0: expected an integer >= 1 (or -1: no limit)",
        ),
        (
            ["trainer.precision=33"],
            "trainer.precision=33: expected one of 64, 32 or 16, 'transformer-engine'",
        ),
        (
            ["+model.num_expert=8"],
            "model.num_expert: unknown key for MMoE; did you mean 'num_experts'?",
        ),
        (
            ["+trainer.max_epoch=3"],
            "trainer.max_epoch: unknown key for Trainer; did you mean 'max_epochs'?",
        ),
        (
            ["+data.num_user=10"],
            "data.num_user: unknown key for SyntheticVideoDataModule; did you mean 'num_users'?",
        ),
        (
            ["+callbacks.model_checkpiont.every_n_train_steps=3"],
            "callbacks.model_checkpiont: has no _target_, so it cannot be built; did you mean 'model_checkpoint'?",
        ),
        (
            # ThroughputMonitor's **kwargs go to fabric's Throughput: checked against it.
            ["+callbacks.throughput.window_sise=50"],
            "callbacks.throughput.window_sise: unknown key for WindowThroughputMonitor; did you mean 'window_size'?",
        ),
        (
            ["module.optimizer._target_=torch.optim.Adamm"],
            "module.optimizer._target_='torch.optim.Adamm': cannot be imported (ImportError); did you mean 'Adam'?",
        ),
        (
            ["module.optimizer=adam"],
            "module.optimizer='adam': expected a torch optimizer node {_target_: torch.optim.Adam, _partial_: true, ...}",
        ),
        (
            ["module.optimizer._target_=recolab.pipelines.rank.RankModule"],
            "module.optimizer._target_='recolab.pipelines.rank.RankModule': expected a torch optimizer class",
        ),
        (
            ["+module.optimizer.fusd=true"],
            "module.optimizer.fusd: unknown key for Adam; did you mean 'fused'?",
        ),
        (
            ["module.optimizer._target_=torch.optim.Adagrad", "+module.optimizer.betas=[0.9,0.99]"],
            "module.optimizer.betas: unknown key for Adagrad",
        ),
        (["+module.optimizer.lr=0.1"], "module.optimizer.lr: set module.lr instead"),
        (
            [
                "+exp=two_tower",
                "module.optimizer._target_=torch.optim.SGD",
                "+module.optimizer.lr=1",
            ],
            "module.optimizer.lr: set module.lr instead",
        ),
        (
            ["+exp=two_tower", "module.sampler.similarity=l2"],
            "module.sampler.similarity='l2': expected",
        ),
        (
            ["+exp=two_tower_mns", "+module.sampler.num_negativs=3"],
            "module.sampler.num_negativs: unknown key for MixedNegativeSoftmax; did you mean 'num_negatives'?",
        ),
        (["+seeed=3"], "seeed: unknown top-level key; did you mean 'seed'?"),
        (
            ["model._target_=recolab.models.rank.mmoe.MMOE"],
            "model._target_='recolab.models.rank.mmoe.MMOE': cannot be imported (ImportError); did you mean 'MMoE'?",
        ),
        (["data=parquet"], "data.path: required, but not set (`???`)"),
        (
            ["+optimized_metric=val/auc/clik"],
            "optimized_metric='val/auc/clik': task 'clik' is not one of data.tasks",
        ),
        (
            ["+exp=two_tower", "module.ks=[20,5000]"],
            "module.ks=[20, 5000]: K=5000 is larger than the corpus (data.num_items=2000)",
        ),
        (
            ["+exp=two_tower_mns", "module.sampler.num_negatives=-1"],
            "module.sampler.num_negatives=-1: expected a number >= 1",
        ),
        # the run's seed and the trainer's limits: each would fail late, raw, or not at all
        (["seed=-1"], "seed=-1: expected an integer in [0, 4294967295] (0 to 2**32 - 1)"),
        (["seed=4294967296"], "seed=4294967296: expected an integer in [0, 4294967295]"),
        (["seed=null"], "seed=None: expected an integer in [0, 4294967295]"),
        (
            ["+trainer.limit_train_batches=0"],
            "trainer.limit_train_batches=0: expected an integer >= 1 (batches) or a fraction in (0, 1]",
        ),
        (["+trainer.limit_train_batches=0.0"], "trainer.limit_train_batches=0.0: expected"),
        (
            ["+trainer.limit_test_batches=0"],
            "trainer.limit_test_batches=0: expected an integer >= 1",
        ),
        (
            ["+trainer.limit_val_batches=0"],
            "trainer.limit_val_batches=0: validation is off, but "
            "callbacks.model_checkpoint.monitor='val/loss' needs its metrics",
        ),
        (
            ["+trainer.limit_val_batches=0", "callbacks.model_checkpoint.monitor=null"],
            "trainer.limit_val_batches=0: validation is off, but "
            "callbacks.early_stopping.monitor='val/loss' needs its metrics",
        ),
        (
            [
                "+trainer.limit_val_batches=0",
                "callbacks.model_checkpoint.monitor=null",
                "callbacks.early_stopping=null",
                "+optimized_metric=val/auc/click",
            ],
            "validation is off, but optimized_metric='val/auc/click' needs its metrics",
        ),
        (
            ["+trainer.max_steps=0"],
            "trainer.max_steps=0: expected an integer >= 1 (or -1: no limit)",
        ),
        (
            ["+trainer.accumulate_grad_batches=0"],
            "trainer.accumulate_grad_batches=0: expected a number >= 1",
        ),
        (
            ["+trainer.val_check_interval=1.5"],
            "trainer.val_check_interval=1.5: expected an integer >= 1 (training batches) or a fraction",
        ),
        (
            ["+trainer.check_val_every_n_epoch=5"],
            "trainer.check_val_every_n_epoch=5: validation never runs in trainer.max_epochs=3, but "
            "callbacks.model_checkpoint.monitor='val/loss' needs its metrics; expected at most 3",
        ),
        (
            ["+trainer.min_epochs=5"],
            "trainer.min_epochs=5: expected at most trainer.max_epochs=3",
        ),
        (
            [f"trainer.devices={(os.cpu_count() or 1) + 1}"],
            f"trainer.devices={(os.cpu_count() or 1) + 1}: expected at most {os.cpu_count() or 1} on the CPU",
        ),
        (
            ["callbacks.early_stopping.patience=-1"],
            "callbacks.early_stopping.patience=-1: expected a number >= 0",
        ),
    ],
)
def test_bad_config_names_key_value_and_expectation(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    exp = [] if any(o.startswith("+exp=") for o in overrides) else ["+exp=mmoe"]
    cfg = compose_train(tmp_path, [*exp, *overrides])
    assert message in problems(cfg)


DDP = "pytorch_lightning.strategies.DDPStrategy"


def test_ddp_strategy_takes_distributed_data_parallel_keys(tmp_path: Path) -> None:
    # DDPStrategy keeps its **kwargs for torch's DistributedDataParallel: those keys are valid,
    # a misspelled one is caught with a suggestion, and the ones Lightning sets itself are not
    # the user's to pass.
    ddp = ["+exp=mmoe", "trainer=ddp"]
    good = f"trainer.strategy={{_target_:{DDP},find_unused_parameters:true,broadcast_buffers:false,static_graph:true}}"
    validate_config(compose_train(tmp_path, [*ddp, good]), known_top_level=KNOWN)
    typo = f"trainer.strategy={{_target_:{DDP},find_unused_parameter:true}}"
    assert (
        "trainer.strategy.find_unused_parameter: unknown key for DDPStrategy; "
        "did you mean 'find_unused_parameters'?"
    ) in problems(compose_train(tmp_path, [*ddp, typo]))
    own = f"trainer.strategy={{_target_:{DDP},device_ids:[0]}}"
    assert "trainer.strategy.device_ids: unknown key for DDPStrategy" in problems(
        compose_train(tmp_path, [*ddp, own])
    )


def test_every_problem_is_listed_one_per_line(mmoe: DictConfig) -> None:
    cfg = with_value(with_value(mmoe, "model.num_experts", 0), "module.lr", "fast")
    lines = problems(cfg).splitlines()
    assert lines == [
        "model.num_experts=0: expected a number >= 1",
        "module.lr='fast': expected a number, got str",
    ]


def test_a_misspelled_key_inside_an_exp_file_is_caught(tmp_path: Path) -> None:
    # Hydra merges a config file's unknown keys silently; only a command-line override is refused.
    (tmp_path / "extra" / "exp").mkdir(parents=True)
    (tmp_path / "extra" / "exp" / "typo.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: mmoe\nexp_name: typo\n"
        "model:\n  num_expert: 8\nsed: 3\n"
    )
    cfg = compose_train(tmp_path, [f"hydra.searchpath=[file://{tmp_path / 'extra'}]", "+exp=typo"])
    assert cfg.model.num_expert == 8  # composed without complaint ...
    found = problems(cfg)  # ... and caught here
    assert "model.num_expert: unknown key for MMoE; did you mean 'num_experts'?" in found
    assert "sed: unknown top-level key; did you mean 'seed'?" in found


def test_train_fails_on_a_bad_config_before_reading_data(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["+exp=mmoe", *TINY_WORLD, "model.num_experts=0"])
    with pytest.raises(ConfigError, match=r"model\.num_experts=0"):
        train(cfg)
    assert not (tmp_path / "data").exists(), (
        "data was generated or read before the config was checked"
    )
    assert not (tmp_path / "mlflow.db").exists(), "a run was tracked for an invalid config"


@pytest.mark.parametrize(
    "override",
    [
        "seed=-1",
        "+trainer.limit_train_batches=0",
        "+trainer.limit_test_batches=0",
        "+trainer.limit_val_batches=0",
        "+trainer.max_steps=0",
        "+trainer.accumulate_grad_batches=0",
    ],
)
def test_train_fails_on_a_run_that_cannot_train_or_test_before_reading_data(
    override: str, tmp_path: Path
) -> None:
    # Each of these trained nothing and reported the run complete, failed with a raw error
    # (numpy's bounds, a ZeroDivisionError), or failed only after training and testing.
    cfg = compose_train(tmp_path, ["+exp=mmoe", *TINY_WORLD, override])
    with pytest.raises(ConfigError, match=override.lstrip("+").split("=")[0] + "="):
        train(cfg)
    assert not (tmp_path / "data").exists(), "data was read before the config was checked"
    assert not (tmp_path / "mlflow.db").exists(), "a run was tracked for an invalid config"


def test_the_valid_trainer_limits_pass(mmoe: DictConfig) -> None:
    cfg = mmoe
    for key, value in {
        "trainer.limit_train_batches": 0.5,
        "trainer.limit_test_batches": 3,
        "trainer.max_steps": -1,
        "trainer.val_check_interval": 0.25,
        "trainer.check_val_every_n_epoch": 3,
        "trainer.min_epochs": 3,
        "seed": 2**32 - 1,
    }.items():
        cfg = with_value(cfg, key, value)
    validate_config(cfg, known_top_level=KNOWN)
    # validation off is fine where nothing needs its metrics
    cfg = with_value(cfg, "trainer.limit_val_batches", 0)
    cfg = with_value(cfg, "callbacks.model_checkpoint.monitor", None)
    cfg = with_value(cfg, "callbacks.early_stopping", None)
    validate_config(cfg, known_top_level=KNOWN)


def test_a_callback_set_to_null_is_left_out(tmp_path: Path) -> None:
    # `callbacks.early_stopping=null` (the usual Hydra way to drop one) made Lightning fail with
    # "'NoneType' object has no attribute ..." as fitting started.
    cfg = compose_train(
        tmp_path,
        [
            "+exp=mmoe",
            *TINY_WORLD,
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=0",
            "callbacks.early_stopping=null",
            "callbacks.model_checkpoint.monitor=null",
            "callbacks.progress_bar.refresh_rate=0",
        ],
    )
    assert any(k.startswith("test/") for k in train(cfg))


def test_a_trainer_lightning_refuses_fails_before_reading_data(tmp_path: Path) -> None:
    # The config check cannot know every strategy name; Lightning checks it as the trainer is
    # built, which `train` does before it reads any data.
    cfg = compose_train(tmp_path, ["+exp=mmoe", *TINY_WORLD, "+trainer.strategy=dpp"])
    validate_config(cfg, known_top_level=KNOWN)
    with pytest.raises(Exception, match="invalid strategy name"):
        train(cfg)
    assert not (tmp_path / "data").exists(), (
        "data was generated or read before the trainer was built"
    )
    if (tmp_path / "mlflow.db").exists():  # the logger opened the store; no run may be in it
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
        experiments = [e.experiment_id for e in client.search_experiments()]
        assert not client.search_runs(experiments), (
            "a run was tracked for a trainer that cannot be built"
        )


# -- properties ---------------------------------------------------------------------------------

POSITIVE_INTS = [
    "model.num_experts",
    "model.embedding.embedding_dim",
    "data.batch_size",
    "data.eval_batch_size",
    "data.num_items",
]
SLOW = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SLOW
@given(key=st.sampled_from(POSITIVE_INTS), value=st.integers(max_value=0))
def test_non_positive_counts_are_rejected_with_the_key(
    mmoe: DictConfig, key: str, value: int
) -> None:
    assert f"{key}={value}: expected a number >= 1" in problems(with_value(mmoe, key, value))


@SLOW
@given(
    key=st.sampled_from(POSITIVE_INTS + ["module.lr", "model.dropout"]),
    value=st.one_of(
        st.text(string.ascii_letters, min_size=1, max_size=6),
        st.lists(st.integers(), max_size=3),
        st.booleans(),
    ),
)
def test_values_of_the_wrong_type_are_rejected_with_the_key(
    mmoe: DictConfig, key: str, value: object
) -> None:
    found = problems(with_value(mmoe, key, value))
    assert found.startswith(f"{key}={value!r}: expected ")


@SLOW
@given(
    num_experts=st.integers(1, 16),
    lr=st.floats(1e-6, 1.0),
    dropout=st.floats(0.0, 0.99),
    batch_size=st.integers(1, 4096),
    weights=st.lists(st.integers(1, 100), min_size=3, max_size=3),
    dims=st.lists(st.integers(1, 256), min_size=1, max_size=3),
)
def test_valid_configs_pass(
    mmoe: DictConfig,
    num_experts: int,
    lr: float,
    dropout: float,
    batch_size: int,
    weights: list[int],
    dims: list[int],
) -> None:
    fractions = [w / sum(weights) for w in weights]
    cfg = with_value(
        mmoe,
        "module.optimizer",
        {"_target_": "torch.optim.Adam", "_partial_": True, "fused": False, "amsgrad": True},
    )
    for key, value in {
        "model.num_experts": num_experts,
        "module.lr": lr,
        "model.dropout": dropout,
        "data.batch_size": batch_size,
        "data.split.fractions": fractions,
        "model.expert_dims": dims,
    }.items():
        cfg = with_value(cfg, key, value)
    validate_config(cfg, known_top_level=KNOWN)


@SLOW
@given(data=st.data())
def test_a_one_letter_typo_of_a_model_key_is_caught_with_a_suggestion(
    mmoe: DictConfig, data: st.DataObject
) -> None:
    key = data.draw(
        st.sampled_from(["num_experts", "embedding", "expert_dims", "tower_dims", "dropout"])
    )
    i = data.draw(st.integers(0, len(key) - 1))
    typo = key[:i] + key[i + 1 :]  # one letter left out
    cfg = with_value(mmoe, f"model.{typo}", 3)
    assert f"model.{typo}: unknown key for MMoE; did you mean {key!r}?" in problems(cfg)


def test_external_constraints_name_real_parameters_of_their_constructors() -> None:
    # A constraint on a parameter its constructor does not take would never fire.
    from hydra.utils import get_object

    from recolab.config_validation import EXTERNAL, accepted_parameters

    for target, constraints in EXTERNAL.items():
        assert set(constraints) <= set(accepted_parameters(get_object(target))[0]), target


def test_a_rule_is_the_constructors_own_and_a_new_parameter_gets_no_other() -> None:
    # The check reads each constructor's annotated signature: a parameter named like another
    # constructor's (`dropout`) takes its own hint's rule, not that one's.
    from typing import Annotated

    from annotated_types import Ge

    from recolab.config_validation import value_problems
    from recolab.params import Rate

    assert value_problems(1.5, float, "model.dropout") == []
    assert value_problems(1.5, Rate, "model.dropout") == [
        "model.dropout=1.5: expected a number < 1"
    ]
    assert value_problems(2, Annotated[int, Ge(3)], "data.days") == [
        "data.days=2: expected a number >= 3"
    ]


def test_constructors_enforce_the_same_declared_rules_when_built() -> None:
    from recolab.models.rank.mmoe import MMoE
    from recolab.params import ArgumentError

    with pytest.raises(ArgumentError, match=r"(?m)^MMoE: num_experts=0: expected a number >= 1$"):
        MMoE(None, num_experts=0)


def test_the_readmes_optimizer_override_composes(tmp_path: Path) -> None:
    # `+module.optimizer.fused=false` (README, experiments/bench/speed.md): the optimizer's own
    # keys go into its node.
    cfg = compose_train(tmp_path, ["+exp=mmoe", "+module.optimizer.fused=false"])
    validate_config(cfg, known_top_level=KNOWN)
    assert cfg.module.optimizer.fused is False
