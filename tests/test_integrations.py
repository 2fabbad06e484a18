"""Lightning: examples/lightning_train.py fits on CPU after ``trainer.validate`` (under
torch.inference_mode) and Lightning's sanity check, and under Lightning's DDP strategy (2 gloo
processes on CPU) ``GlobalBatch`` gives each step the gradient of one process on the whole batch.

Skipped without Lightning (in the ``test`` and ``integrations`` extras). Run as a script, this
file is the DDP worker: Lightning's launcher starts rank 1 by running the same command again.
"""

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning")
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from uniloss import zoo  # noqa: E402

# Lightning 2.6 on torch 2.13 (not this code): "`isinstance(treespec, LeafSpec)` is deprecated".
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:DeprecationWarning", "ignore:.*LeafSpec:FutureWarning")

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
SEED = 7
STEPS = 3
BATCH = 4  # per rank


def _load_example():
    spec = importlib.util.spec_from_file_location("lightning_train", ROOT / "examples" / "lightning_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _load_example()


class _Recording(example.UniLossClassifier):
    """The example's module, recording each training step's batch, score gradient and
    (DDP-reduced) parameter gradients."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = []
        self.validation_modes = []  # (sanity check?, inference mode?) of each validation step

    def forward(self, x):
        scores = super().forward(x)
        if scores.requires_grad:
            scores.retain_grad()
            self._scores = scores
        return scores

    def training_step(self, batch, batch_idx):
        self._batch = batch
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.validation_modes.append((self.trainer.sanity_checking, torch.is_inference_mode_enabled()))
        return super().validation_step(batch, batch_idx)

    def on_after_backward(self):  # after DDP's all-reduce of the parameter gradients
        x, y = self._batch
        self.records.append({
            "x": x.detach().clone(), "y": y.clone(), "scores": self._scores.detach().clone(),
            "score_grad": self._scores.grad.clone(),
            "param_grads": [p.grad.detach().clone() for p in self.parameters()],
            "metric": float(self.loss_fn.last.metric), "loss": float(self.loss_fn.last.loss),
        })


def _data(n, seed=0, classes=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    if classes > 2:
        return x, (x[:, :classes] + 0.5 * torch.randn(n, classes, generator=g, dtype=torch.float64)).argmax(1)
    y = (x[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0.3).long()
    y[::4] = 1  # a positive in every batch of 4 rows, so in every global batch
    return x, y


def _module(batch_size=BATCH, **kw):
    torch.manual_seed(0)  # the same initial weights in every process
    return _Recording(in_features=5, hidden=8, lr=0.5, momentum=0.0, seed=SEED, batch_size=batch_size, **kw)


def _trainer(tmp, **kw):
    return L.Trainer(accelerator="cpu", max_steps=STEPS, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp), **kw)


# --------------------------------------------------------------------------- one process


# AP is the example's metric; macro-F1 over all class pairs caches its pair indices in the decoder.
METRICS = {
    "ap": dict(),
    "macro_f1": dict(metric=zoo.macro_f1(3, pairs="all"), metric_name="macro_f1", num_outputs=3),
}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_fit_after_validate_and_sanity_check(tmp_path, empty_caches, name):
    """The loss's first calls run without autograd: ``trainer.validate`` (under
    torch.inference_mode), then fit's sanity check (torch.no_grad in Lightning 2.6; inference_mode
    in some versions); training then backpropagates through the tensors cached by those calls.
    This once raised "Inference tensors cannot be saved for backward" on the first training step."""
    torch.set_num_threads(1)
    x, y = _data(8 * STEPS, classes=METRICS[name].get("num_outputs", 2))
    x = x.float()
    model = _module(batch_size=8, **METRICS[name])
    before = [p.detach().clone() for p in model.parameters()]
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # validation sees the training batches
    trainer = _trainer(tmp_path, devices=1, num_sanity_val_steps=2, limit_val_batches=2)
    trainer.validate(model, loader)
    assert model.validation_modes == [(False, True)] * 2  # inference mode
    trainer.fit(model, loader, loader)

    assert [sanity for sanity, _ in model.validation_modes[2:4]] == [True, True]  # the sanity check ran
    assert trainer.global_step == STEPS and len(model.records) == STEPS
    assert all(torch.isfinite(r["score_grad"]).all() and r["score_grad"].abs().sum() > 0 for r in model.records)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trained
    # The logged batch metric is the loss's exact metric: the metric of the step's scores.
    last = model.records[-1]
    assert float(trainer.callback_metrics[f"train_{model.hparams.metric_name}"]) == pytest.approx(last["metric"])
    assert last["metric"] == pytest.approx(float(model.metric.metric(last["scores"], last["y"])))
    assert 0.0 <= float(trainer.callback_metrics[f"val_{model.hparams.metric_name}"]) <= 1.0


# --------------------------------------------------------------------------- 2 processes, DDP


def _ddp_worker(out: Path) -> None:
    torch.set_num_threads(1)
    x, y = _data(WORLD * BATCH * STEPS)
    model = _module()
    trainer = _trainer(out, devices=WORLD, strategy=DDPStrategy(process_group_backend="gloo"),
                       precision="64-true", num_sanity_val_steps=1, limit_val_batches=1)
    # Lightning's DistributedSampler (no shuffle) gives rank r the rows r, r + 2, ...
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=BATCH),
                DataLoader(TensorDataset(x, y), batch_size=BATCH))
    torch.save({"records": model.records, "params": [p.detach() for p in model.parameters()],
                "validation_modes": model.validation_modes}, out / f"rank{trainer.global_rank}.pt")
    trainer.strategy.barrier()  # both files written; no rank tears the group down early
    for proc in getattr(trainer.strategy.launcher, "procs", []):  # rank 0 waits for rank 1
        proc.wait(timeout=60)


@pytest.mark.slow
def test_ddp_global_batch_gives_single_process_gradient(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK")}
    env.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--ddp-worker", str(tmp_path)],
                            cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 0 and the rank 1 it started
        output, _ = proc.communicate()
        pytest.fail(f"the 2-process run timed out:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # One process on the global batch (rank 0's rows, then rank 1's), the same anchors.
    reference = _module(batch_size=None).double()
    opt = reference.configure_optimizers()
    seen = []
    for step in range(STEPS):
        parts = [r["records"][step] for r in ranks]
        x = torch.cat([p["x"] for p in parts])
        y = torch.cat([p["y"] for p in parts])
        seen.append(x)
        scores = reference(x)
        scores.retain_grad()
        loss = reference.loss_fn(scores, y)
        opt.zero_grad()
        loss.backward()
        start = 0
        for part in parts:
            n = part["x"].shape[0]
            assert n == BATCH
            assert part["loss"] == pytest.approx(float(loss.detach()), abs=1e-12)
            assert part["metric"] == pytest.approx(float(reference.loss_fn.last.metric), abs=1e-12)
            # grad_reduction="mean": each rank's scores get W * dL/ds, DDP averages over ranks.
            torch.testing.assert_close(part["score_grad"], WORLD * scores.grad[start:start + n], rtol=0, atol=1e-12)
            for got, p in zip(part["param_grads"], reference.parameters()):
                torch.testing.assert_close(got, p.grad, rtol=0, atol=1e-12)
            start += n
        assert scores.grad.abs().sum() > 0
        opt.step()
    for r in ranks:
        for got, p in zip(r["params"], reference.parameters()):
            torch.testing.assert_close(got, p.detach(), rtol=0, atol=1e-12)
        assert r["validation_modes"][0][0]  # the sanity check ran on every rank
    # The ranks' halves partition the data.
    rows = torch.cat(seen)
    assert rows.shape[0] == WORLD * BATCH * STEPS and torch.unique(rows, dim=0).shape[0] == rows.shape[0]


if __name__ == "__main__" and sys.argv[1:2] == ["--ddp-worker"]:
    _ddp_worker(Path(sys.argv[2]))
