"""Train a small classifier on average precision with PyTorch Lightning.

    pip install "uniloss[integrations]"                      # lightning (and torchmetrics)
    python examples/lightning_train.py                       # one CPU process
    python examples/lightning_train.py --devices 2           # 2 CPU processes, DDP on gloo

The ``LightningModule`` below trains with ``uniloss.UniLoss`` and logs the exact average
precision of each training batch (``loss_fn.last.metric``), a free by-product of the loss. The
loss is wrapped in ``GlobalBatch``: under Lightning's DDP strategy each rank sees its shard of
every batch, and the loss is the UniLoss of the *global* batch (one all-gather of the scores and
one of the targets per step), so 2 processes on halves give the gradient of 1 process on the
whole batch (``tests/test_integrations.py`` checks it). On one process the wrapper is the
identity. Validation logs the exact AP of the whole validation set, gathered from every rank.
Another metric: ``UniLossClassifier(metric=uniloss.MulticlassAccuracy(), metric_name="accuracy",
num_outputs=10)``.

Every rank must draw the same anchors: the loss's generator is seeded identically on every rank.
Validation uses a loss of its own, with its own generator, so that how often validation runs
(Lightning's sanity check, ``trainer.validate``) does not change the training anchors.
"""

import argparse
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

try:
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy
except ImportError as exc:  # pragma: no cover - a hint for users without the extra
    raise ImportError(
        "examples/lightning_train.py needs Lightning: pip install \"uniloss[integrations]\" "
        "(or pip install lightning)"
    ) from exc

import uniloss
from uniloss.distributed import GlobalBatch


def make_data(n: int = 4000, dim: int = 20, seed: int = 1234) -> Tuple[Tensor, Tensor]:
    """A rare positive class (10%): the setting where a per-rank AP is noisiest."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    logits = x @ torch.randn(dim, generator=g)
    y = (logits > logits.quantile(0.9)).long()
    return x, y


class UniLossClassifier(L.LightningModule):
    """A classifier trained on the UniLoss of a metric, by default average precision.

    Args:
        in_features: input dimension.
        hidden: width of the hidden layer.
        lr, momentum: SGD settings.
        seed: seed of the anchors' generator, the same on every rank.
        batch_size: the per-rank batch size, if known (saves ``GlobalBatch`` one exchange of
            the batch sizes per step).
        metric: the metric, a stateless :class:`uniloss.Decomposition` (default:
            ``AveragePrecision()`` on ``[n]`` scores); with ``num_outputs`` > 1 the scores are
            ``[n, num_outputs]`` (e.g. ``uniloss.MulticlassAccuracy()``).
        metric_name: the logged names are ``train_<name>`` and ``val_<name>``.
    """

    def __init__(self, in_features: int = 20, hidden: int = 32, lr: float = 0.05, momentum: float = 0.5,
                 seed: int = 0, batch_size: Optional[int] = None, metric: Optional[uniloss.Decomposition] = None,
                 metric_name: str = "ap", num_outputs: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["metric"])
        self.net = torch.nn.Sequential(
            torch.nn.Linear(in_features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_outputs)
        )
        self.metric = uniloss.AveragePrecision() if metric is None else metric
        # grad_reduction="mean" (the default): DDP averages the parameter gradients over ranks.
        self.loss_fn = uniloss.UniLoss(GlobalBatch(self.metric, batch_size=batch_size),
                                       generator=torch.Generator().manual_seed(seed))
        self.val_loss_fn = uniloss.UniLoss(GlobalBatch(self.metric),
                                           generator=torch.Generator().manual_seed(seed + 1))
        self._val_scores: List[Tensor] = []
        self._val_targets: List[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        """``[n]`` scores (``[n, num_outputs]`` for more than one output)."""
        out = self.net(x)
        return out[:, 0] if self.hparams.num_outputs == 1 else out

    def training_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        # The exact metric of the global batch's hard decisions: the same on every rank, so no
        # sync_dist. For AP, NaN for a batch without a positive (its loss is 0).
        self.log(f"train_{self.hparams.metric_name}", self.loss_fn.last.metric, prog_bar=True)
        self.log("train_loss", loss.detach())
        return loss

    def validation_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        # Runs without autograd: under torch.inference_mode in trainer.validate(), under
        # torch.no_grad (or inference_mode, by Lightning version and backend) within fit.
        x, y = batch
        scores = self(x)
        # A global-batch value, the same on every rank: sync_dist (the mean of equal values)
        # only keeps Lightning from advising it.
        self.log("val_loss", self.val_loss_fn(scores, y), sync_dist=True)
        self._val_scores.append(scores)
        self._val_targets.append(y)

    def on_validation_epoch_end(self) -> None:
        if not self._val_scores:
            return
        # The exact metric of the whole validation set: GlobalBatch.metric gathers every rank's
        # scores (a collective: every rank calls it).
        value = GlobalBatch(self.metric).metric(torch.cat(self._val_scores), torch.cat(self._val_targets))
        self.log(f"val_{self.hparams.metric_name}", value, prog_bar=True, sync_dist=True)
        self._val_scores.clear()
        self._val_targets.clear()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--devices", type=int, default=1, help="CPU processes (2 or more: DDP on gloo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="lightning_logs", help="where Lightning writes its logs")
    args = parser.parse_args()

    torch.set_num_threads(1)
    L.seed_everything(args.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    x, y = make_data()
    train = DataLoader(TensorDataset(x[:3000], y[:3000]), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x[3000:], y[3000:]), batch_size=250)
    model = UniLossClassifier(in_features=x.shape[1], seed=args.seed, batch_size=args.batch_size)
    strategy = DDPStrategy(process_group_backend="gloo") if args.devices > 1 else "auto"
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy, max_epochs=args.epochs,
                        default_root_dir=args.root, enable_checkpointing=False, log_every_n_steps=10)
    # Under DDP, Lightning puts a DistributedSampler on both loaders: each rank gets its shard.
    trainer.validate(model, val)  # the untrained model's AP
    trainer.fit(model, train, val)
    trainer.strategy.barrier()  # no rank leaves (and tears the group down) while another works
    if trainer.is_global_zero:
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        print(f"after {args.epochs} epochs on {trainer.world_size} process(es): {metrics}")


if __name__ == "__main__":
    main()
