"""Train a small classifier on average precision with DistributedDataParallel.

    torchrun --nproc_per_node=2 examples/ddp_train.py            # CPU, gloo
    torchrun --nproc_per_node=2 examples/ddp_train.py --memory 256

Each rank gets its shard of every batch (a DistributedSampler); the loss is the UniLoss of the
*global* batch: ``GlobalBatch`` gathers scores and targets (one all-gather each per step), every
rank draws the same anchors from an identically seeded generator, and each rank's gradient flows
to its own scores, scaled so that DDP's gradient averaging gives the single-process gradient.
Also runs as one plain process (``python examples/ddp_train.py``): the wrapper is then the
identity.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import uniloss
from uniloss.distributed import CrossBatchMemory, GlobalBatch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--memory", type=int, default=0, help="cross-batch memory, samples (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")  # "nccl" on GPUs (and move model and data to the rank's device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.set_num_threads(1)

    # A rare positive class (10%): the setting where a per-rank AP is noisiest.
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(4000, 20, generator=g)
    w = torch.randn(20, generator=g)
    logits = x @ w
    y = (logits > logits.quantile(0.9)).long()
    train, test = TensorDataset(x[:3000], y[:3000]), (x[3000:], y[3000:])

    sampler = DistributedSampler(train, num_replicas=world, rank=rank, seed=args.seed) if distributed else None
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None)

    torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)

    metric = uniloss.AveragePrecision()
    if args.memory:
        metric = CrossBatchMemory(metric, size=args.memory)  # inside GlobalBatch: gathered batches
    # Same seed on every rank: the same anchors, so every rank computes the same global loss.
    loss_fn = uniloss.UniLoss(GlobalBatch(metric, batch_size=args.batch_size),
                              generator=torch.Generator().manual_seed(args.seed))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)

    for epoch in range(args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        total, steps = 0.0, 0
        for xb, yb in loader:
            loss = loss_fn(model(xb)[:, 0], yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if loss_fn.last.metric == loss_fn.last.metric:  # NaN: no positive in the global batch
                total, steps = total + float(loss_fn.last.metric), steps + 1
        if rank == 0:  # the plain module: an evaluation must not enter DDP's (collective) forward
            with torch.no_grad():
                scores = (model.module if distributed else model)(test[0])[:, 0]
            test_ap = float(uniloss.AveragePrecision().metric(scores, test[1]))
            print(f"epoch {epoch + 1}: global-batch train AP {total / max(steps, 1):.4f}, test AP {test_ap:.4f}"
                  f" ({world} rank{'s' if world > 1 else ''}, {loss_fn.last.num_bits} comparisons in the last step)")
    if distributed:
        # Every rank waits here until rank 0 has evaluated and printed: a rank that tore its process
        # group down while another still used it could make that one abort at exit (SIGABRT,
        # "terminate called without an active exception"), and the launcher would mark the job failed.
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
