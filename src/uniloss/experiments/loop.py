"""The one training loop of the package: ``uniloss train`` and ``uniloss demo``, the metric-wins
benchmark and the benchmarks' scripts all step their networks with :func:`train_epoch`.

A step is, in this order::

    loss = step_loss(model, batch)          # forward pass and loss (under autocast if asked)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    on_backward(step, loss)                 # optional: the gradients are there (norms, clipping)
    optimizer.step()
    on_step(step, loss)                     # optional: running sums, progress bars, probes

The loop draws no random number of its own: batch order, anchors and augmentation come from the
caller's ``batches`` and ``step_loss``, in the order they are consumed, so a run that moves onto
this loop keeps its numbers bit for bit. :func:`train_epochs` adds the epochs, a scheduler and an
evaluation after each epoch; :func:`shuffled` is the usual ``batches``; :func:`predict` gives a
model's outputs on a held-out split, as the evaluations read them.

Example: a linear regression, five epochs of four batches of 16 samples.

>>> import torch
>>> from torch import nn
>>> from uniloss.experiments.loop import shuffled, train_epoch, train_epochs
>>> x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
>>> y = x @ torch.tensor([1.0, -2.0, 0.5])
>>> _ = torch.manual_seed(0)
>>> model = nn.Linear(3, 1)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
>>> def step_loss(m, idx):
...     return nn.functional.mse_loss(m(x[idx])[:, 0], y[idx])
>>> losses = []
>>> train_epoch(model, opt, shuffled(64, 16, torch.Generator().manual_seed(0))(0), step_loss,
...             on_step=lambda step, loss: losses.append(float(loss.detach())))
4
>>> len(losses)
4
>>> curve = train_epochs(model, opt, shuffled(64, 16, torch.Generator().manual_seed(1)), step_loss, 5,
...                      lambda m: nn.functional.mse_loss(m(x)[:, 0], y).item())
>>> len(curve), curve[-1] < curve[0] < losses[0]
(5, True)
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Optional, Sequence, TypeVar, Union

import torch
from torch import Tensor, nn

B = TypeVar("B")

#: ``on_step`` / ``on_backward``: called with the step's index in the epoch (from 0) and its loss.
StepHook = Callable[[int, Tensor], None]


class Autocast(nn.Module):
    """``model``'s forward pass under ``torch.autocast(device_type, dtype)``, its outputs cast back
    to float32 outside it (a tensor, or each tensor of a list or tuple), so that the loss runs in
    float32. :func:`train_epoch` hands this to ``step_loss`` when given ``autocast``.

    >>> out = Autocast(nn.Linear(4, 2), "cpu")(torch.ones(3, 4))
    >>> out.shape, out.dtype
    (torch.Size([3, 2]), torch.float32)
    """

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.model(*args, **kwargs)
        if isinstance(out, (list, tuple)):
            return type(out)(o.float() if isinstance(o, Tensor) else o for o in out)
        return out.float()


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[B],
    step_loss: Callable[[nn.Module, B], Tensor],
    *,
    on_step: Optional[StepHook] = None,
    on_backward: Optional[StepHook] = None,
    autocast: Union[str, torch.device, None] = None,
    autocast_dtype: torch.dtype = torch.bfloat16,
) -> int:
    """One pass over ``batches``: a step of ``optimizer`` per batch; returns the number of steps.

    Args:
        model: the network; put in training mode first (``model.train()``).
        optimizer: steps ``model``'s parameters; its gradients are set to ``None`` before each
            backward pass (``zero_grad(set_to_none=True)``).
        batches: the epoch's batches, any objects ``step_loss`` understands (e.g. index tensors
            ``[batch]`` or ``(inputs, targets)`` pairs); a generator is consumed lazily, one
            batch before each step, so random draws it makes interleave with the steps' as
            they would in a hand-written loop.
        step_loss: ``step_loss(model, batch)``, the batch's scalar loss (a tensor with a grad).
            It receives :class:`Autocast` around ``model`` when ``autocast`` is given.
        on_step: ``on_step(step, loss)`` after each ``optimizer.step()`` (``step`` counts from 0
            in this epoch); ``loss`` still has its graph, so ``loss.detach()`` to keep it.
        on_backward: ``on_backward(step, loss)`` between ``loss.backward()`` and
            ``optimizer.step()``: the parameters' ``.grad`` hold the batch's gradient.
        autocast: a device type (``"cuda"``, ``"cpu"``) or device: run the forward pass in
            ``autocast_dtype`` (mixed precision) and hand the loss float32 outputs; ``None``
            (default): plain float32.
        autocast_dtype: the autocast's lower precision (``torch.bfloat16``).

    Returns:
        The number of steps taken (the number of batches).
    """
    model.train()
    forward: nn.Module = model
    if autocast is not None:
        device_type = autocast.type if isinstance(autocast, torch.device) else autocast
        forward = Autocast(model, device_type, autocast_dtype)
    steps = 0
    for batch in batches:
        loss = step_loss(forward, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if on_backward is not None:
            on_backward(steps, loss)
        optimizer.step()
        if on_step is not None:
            on_step(steps, loss)
        steps += 1
    return steps


def train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Iterable[B]],
    step_loss: Callable[[nn.Module, B], Tensor],
    epochs: int,
    evaluate: Callable[[nn.Module], float],
    scheduler: Optional[Any] = None,
    *,
    on_epoch: Optional[Callable[[int, float], None]] = None,
) -> List[float]:
    """``epochs`` calls of :func:`train_epoch`, each followed by ``scheduler.step()`` and an
    evaluation; returns the evaluation after each epoch (``epochs`` floats).

    Args:
        model, optimizer, step_loss: as in :func:`train_epoch`.
        batches: ``batches(epoch)``, the batches of epoch ``epoch`` (from 0); called at the start
            of that epoch (e.g. :func:`shuffled`).
        epochs: how many epochs.
        evaluate: ``evaluate(model)``, the held-out metric; called in evaluation mode
            (``model.eval()``) without gradients, so the model is left in evaluation mode.
        scheduler: a learning-rate schedule stepped once after each epoch's steps (or ``None``).
        on_epoch: ``on_epoch(epoch, value)`` after each evaluation (progress reports).
    """
    curve: List[float] = []
    for epoch in range(epochs):
        train_epoch(model, optimizer, batches(epoch), step_loss)
        if scheduler is not None:
            scheduler.step()
        model.eval()
        with torch.no_grad():
            curve.append(float(evaluate(model)))
        if on_epoch is not None:
            on_epoch(epoch, curve[-1])
    return curve


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, chunk: int = 4096) -> Tensor:
    """``model``'s outputs on ``x``, as evaluation reads them: in evaluation mode
    (``model.eval()``), without gradients, ``chunk`` samples at a time, concatenated along the
    first dimension. The model's mode is restored afterwards, so a training loop can call it
    between epochs.

    Args:
        model: a module whose forward pass maps ``[m, ...]`` inputs to ``[m, ...]`` outputs.
        x: the inputs, ``[N, ...]``; ``N`` may be 0 (one call on the empty batch).
        chunk: samples per forward pass, at least 1 (the outputs do not depend on it but for
            rounding: a convolution's kernel may round differently at another batch size).

    Returns:
        ``[N, ...]``, the outputs of every sample, in order.

    >>> net = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5))
    >>> x = torch.randn(10, 3)
    >>> out = predict(net, x, chunk=4)
    >>> out.shape, out.requires_grad, net.training
    (torch.Size([10, 2]), False, True)
    >>> torch.allclose(out, net[0](x))          # dropout off: evaluation mode
    True
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + chunk]) for i in range(0, max(len(x), 1), chunk)])
    finally:
        model.train(was_training)


def shuffled(n: int, batch: int, generator: torch.Generator) -> Callable[[int], Sequence[Tensor]]:
    """``batches(epoch)`` for :func:`train_epochs`: a fresh permutation of ``range(n)`` from
    ``generator`` each epoch (drawn when called), cut into index tensors ``[batch]`` (the last one
    shorter when ``batch`` does not divide ``n``).

    >>> batches = shuffled(10, 4, torch.Generator().manual_seed(0))
    >>> [len(b) for b in batches(0)]
    [4, 4, 2]
    >>> sorted(torch.cat(batches(1)).tolist()) == list(range(10))
    True
    """
    def batches(epoch: int) -> Sequence[Tensor]:
        order = torch.randperm(n, generator=generator)
        return [order[i:i + batch] for i in range(0, n, batch)]
    return batches


J = TypeVar("J")
R = TypeVar("R")


def run_jobs(fn: Callable[[J], R], jobs: Sequence[J], processes: int = 2, desc: str = "runs") -> "dict[J, R]":
    """``{job: fn(job)}`` for each of ``jobs`` (hashable), ``processes`` at a time in processes of
    their own (``1``: one after the other in this one), with a progress bar where tqdm is
    installed: the benchmarks' grids of runs. ``fn`` must be a module-level function (pickled to
    the processes) and should set its own thread count.

    >>> run_jobs(abs, [-2, 3], processes=1, desc="")
    {-2: 2, 3: 3}
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed

    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a convenience
        tqdm = None
    bar = tqdm(total=len(jobs), desc=desc, unit="run") if tqdm is not None and desc else None
    values = {}
    if processes <= 1:
        for job in jobs:
            values[job] = fn(job)
            if bar is not None:
                bar.update(1)
    else:
        with ProcessPoolExecutor(processes) as pool:
            futures = {pool.submit(fn, job): job for job in jobs}
            for future in as_completed(futures):
                values[futures[future]] = future.result()
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return values
