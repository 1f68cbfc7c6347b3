"""torch-rechub's MMoE trained the way its documentation shows; run with benchmarks/rechub_env's python.

    benchmarks/rechub_env/bin/python benchmarks/_rechub_run.py DATA_DIR OUT_JSON

DATA_DIR holds `spec.json` (features, tasks, architecture, optimizer, batch size, epochs and an
optional step limit) and `train.npz` / `test.npz` (the same encoded columns recolab trains on,
written by bench_vs_rechub.py). The data goes through torch-rechub's `DataGenerator` (a per-sample
`TorchDataset` and default-collate `DataLoader`s) into `MTLTrainer.fit`. With a step limit, the
training loader is the same shuffled `DataLoader` over the same dataset drawing `steps * batch`
samples (a `RandomSampler` with `num_samples`), since `MTLTrainer` has no step limit of its own.
Only the time inside `MTLTrainer.train_one_epoch` is counted (its per-epoch validation is not),
as wall-clock and as CPU seconds of the process.
Nothing from recolab is imported here: this runs in torch-rechub's own environment.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler
from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
from torch_rechub.models.multi_task import MMOE
from torch_rechub.trainers import MTLTrainer
from torch_rechub.utils.data import DataGenerator


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    spec = json.loads((data / "spec.json").read_text())
    torch.manual_seed(spec["seed"])
    D = spec["embedding_dim"]
    features = [
        SparseFeature(name, vocab_size=v, embed_dim=D) for name, v in spec["sparse"].items()
    ]
    features += [
        SequenceFeature(
            name,
            vocab_size=s["vocab_size"],
            embed_dim=D,
            pooling="mean",
            shared_with=s["shared_with"],
            padding_idx=0,
        )
        for name, s in spec["sequences"].items()
    ]
    features += [DenseFeature(name) for name in spec["dense"]]
    tasks = spec["tasks"]
    task_types = ["classification" if t["kind"] == "binary" else "regression" for t in tasks]

    def arrays(split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        z = np.load(data / f"{split}.npz")
        x = {f.name: z[f"x/{f.name}"] for f in features}
        y = np.stack([z[f"y/{t['name']}"] for t in tasks], axis=1)  # (N, T)
        return x, y

    x_train, y_train = arrays("train")
    x_test, y_test = arrays("test")
    B = spec["batch_size"]
    dg = DataGenerator(x_train, y_train)
    train_dl, val_dl, test_dl = dg.generate_dataloader(
        x_val=x_test, y_val=y_test, x_test=x_test, y_test=y_test, batch_size=B
    )
    if spec.get("steps"):
        train_dl = DataLoader(
            dg.dataset,
            batch_size=B,
            sampler=RandomSampler(dg.dataset, num_samples=spec["steps"] * B),
        )

    # Its data pipeline alone (a profile of where its time goes): the first 50 batches.
    t, seen = time.perf_counter(), 0
    for i, (x, _) in enumerate(train_dl):
        seen += len(next(iter(x.values())))
        if i == 49:
            break
    data_rate = seen / (time.perf_counter() - t)

    model = MMOE(
        features,
        task_types,
        n_expert=spec["num_experts"],
        expert_params={"dims": spec["expert_dims"]},
        tower_params_list=[{"dims": spec["tower_dims"]} for _ in tasks],
    )
    epochs = spec["epochs"]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = MTLTrainer(
            model,
            task_types=task_types,
            optimizer_params={"lr": spec["lr"], "weight_decay": 0.0},
            n_epoch=epochs,
            earlystop_patience=epochs + 1,
            device="cpu",
            model_path=tmp,
        )
        timed: list[dict[str, float]] = []
        train_one_epoch = trainer.train_one_epoch

        def timed_epoch(loader):
            t, cpu = time.perf_counter(), time.process_time()
            result = train_one_epoch(loader)
            timed.append(
                {
                    "seconds": time.perf_counter() - t,
                    "cpu_seconds": time.process_time() - cpu,
                    "samples": len(loader.sampler),
                }
            )
            return result

        trainer.train_one_epoch = timed_epoch
        trainer.fit(train_dl, val_dl)
        scores = trainer.evaluate(trainer.model, test_dl)
    record = {
        "epochs": timed,
        "metrics": {
            f"test/{'auc' if k == 'classification' else 'mse'}/{t['name']}": float(s)
            for t, k, s in zip(tasks, task_types, scores)
        },
        "data_samples_per_sec": data_rate,
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_rechub": __import__("importlib.metadata").metadata.version("torch-rechub"),
        "torch": torch.__version__,
        "params": sum(p.numel() for p in model.parameters()),
    }
    out.write_text(json.dumps(record))


if __name__ == "__main__":
    main()
