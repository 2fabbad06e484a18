r"""The relaxation ``h~`` and the inverse-distance-weighted interpolation ``g~`` (paper 3.4-3.5).

The relaxed point is ``u = sigmoid(c / tau)`` in ``(0, 1)^l``; the interpolation is Shepard's
inverse distance weighting over anchors ``a_i`` in ``{0, 1}^l``:

.. math::

    \tilde g(u) = \frac{\sum_i g(a_i) / d(u, a_i)}{\sum_i 1 / d(u, a_i)},
    \qquad \tilde g(u) = g(a_i) \text{ where } d(u, a_i) = 0 .

Distances are computed relative to the hard configuration ``h = [c > 0]``: with the residual
``r_k = |u_k - h_k| = sigmoid(-|c_k| / tau)`` (in ``[0, 1/2]``, computed directly so it does not
round to zero when ``u`` rounds to 0 or 1),

.. math::

    d(u, a)^2 = \sum_k r_k^2 + \sum_{k : a_k \ne h_k} (1 - 2 r_k),

a sum of non-negative terms, free of the cancellation of ``|u|^2 - 2 u.a + |a|^2`` when ``l``
is large. The published code's ``(-1, 1)`` convention scales every distance by 2, which leaves
the weights unchanged.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union, cast

import torch
from torch import Tensor


def relax(comparisons: Tensor, temperature: float = 1.0) -> Tensor:
    """``h~(c) = sigmoid(c / temperature)``: the relaxed bits in ``(0, 1)``, shape of ``c``."""
    return torch.sigmoid(comparisons / temperature)


TEMPERATURE_SCALES = (None, "rms")
DISTANCES = ("euclidean", "cross_entropy")


def bit_costs(comparisons: Tensor, temperature, distance: str = "euclidean") -> Tuple[Tensor, Tensor, Tensor]:
    r"""The per-bit pieces of the squared distances from the relaxed point to the anchors.

    Every squared distance is ``d(u, a)^2 = sum_k base_k + sum_{k: a_k != h_k} flip_k`` with
    ``h = [c > 0]`` and ``z_k = |c_k| / tau`` (its sign taken from ``h``):

    * ``"euclidean"`` (the paper): ``(u_k - a_k)^2`` summed, ``base = r^2``, ``flip = 1 - 2 r``
      with ``r = sigmoid(-z)`` (see the module documentation);
    * ``"cross_entropy"``: the Bernoulli cross-entropy of each vertex bit under ``u_k``,
      ``-log u_k`` where ``a_k = 1`` and ``-log(1 - u_k)`` where ``a_k = 0``:
      ``base = softplus(-z)``, ``flip = z``. Its gradient in ``c`` does not vanish for a
      comparison that is wrong by a wide margin (the sigmoid's slope cancels, as in logistic
      regression), where the Euclidean one decays like ``exp(-z)``.

    Differentiable in ``comparisons``. Returns ``(r, base, flip)``, each shaped like ``c``.
    """
    hard = comparisons.detach() > 0
    z = torch.where(hard, comparisons, -comparisons) / temperature
    r = torch.sigmoid(-z)
    if distance == "euclidean":
        return r, r * r, 1.0 - 2.0 * r
    return r, torch.nn.functional.softplus(-z), z


def comparison_scale(comparisons: Tensor, mode: Optional[str], scores_dtype: Optional[torch.dtype] = None) -> Optional[Tensor]:
    """The scale the temperature is measured in: ``None`` (absolute, the paper) or the detached
    root mean square of the comparisons (``"rms"``, see :func:`rms_unit`; ``scores_dtype`` the
    gradient's), a 0-dim tensor on their device (no host synchronisation)."""
    if mode is None:
        return None
    c = comparisons.detach()
    if c.numel() == 0:
        return torch.ones((), dtype=c.dtype, device=c.device)
    return rms_unit(c.square().mean().sqrt(), scores_dtype)


def rms_unit(rms: Tensor, scores_dtype: Optional[torch.dtype] = None) -> Tensor:
    """The comparisons' root mean square as the temperature's unit: 1 where it is 0 (every
    comparison a tie, e.g. constant scores: there is no scale to measure, so the temperature is
    absolute), else at least ``sqrt(tiny)`` of its dtype and of ``scores_dtype`` (the gradient's:
    ``1 / temperature`` and the gradients it multiplies stay finite; a floor at ``tiny`` itself
    overflowed them to inf and NaN, and float16 scores, relaxed in float32, overflowed their
    gradient below float16's ``sqrt(tiny)``, 7.8e-3)."""
    tiny = torch.finfo(rms.dtype).tiny
    if scores_dtype is not None and scores_dtype.is_floating_point:
        tiny = max(tiny, torch.finfo(scores_dtype).tiny)
    floor = tiny ** 0.5
    return torch.where(rms > 0, rms.clamp_min(floor), torch.ones_like(rms))


def residual(comparisons: Tensor, temperature: float = 1.0) -> Tuple[Tensor, Tensor]:
    """Split the relaxed point into the hard bits and the distance to them.

    Returns:
        ``(hard, r)``: ``hard = [c > 0]`` (bool, no grad) and ``r = |sigmoid(c/tau) - hard|`` in
        ``[0, 1/2]``, differentiable, computed as ``sigmoid(-|c|/tau)`` with the sign taken from
        ``hard`` so the gradient is right at ``c == 0`` too.
    """
    hard = comparisons.detach() > 0
    r = torch.sigmoid(torch.where(hard, -comparisons, comparisons) / temperature)
    return hard, r


def idw_from_residual(hard: Tensor, r: Tensor, disagreement: Tensor, values: Tensor) -> Tensor:
    """Inverse distance weighting at the point ``hard +/- r`` over anchors.

    Args:
        hard: ``[l]`` bool; r: ``[l]`` float in ``[0, 1/2]`` (see :func:`residual`).
        disagreement: ``[t, l]`` float, 1 where anchor ``i`` differs from ``hard`` at bit ``k``
            (or anything whose product with ``1 - 2r`` gives that sum).
        values: ``[t]`` metric values ``g(a_i)`` (no grad).

    Returns:
        A scalar ``g~``, exactly ``g(a_i)`` when the point sits on anchor ``i`` (the mean over
        coinciding anchors, which then share one configuration and one value), with finite
        gradients everywhere (zero at an exact hit).
    """
    return idw_from_sq_distances(sq_distances(r, disagreement), values)


def sq_distances(r: Tensor, disagreement: Tensor) -> Tensor:
    """``[t]`` squared distances from the point ``hard +/- r`` to the anchors (see module doc)."""
    return (r * r).sum() + disagreement @ (1.0 - 2.0 * r)


def sq_distances_from_costs(base: Tensor, flip: Tensor, disagreement: Tensor) -> Tensor:
    """``[t]`` squared distances from per-bit costs (:func:`bit_costs`) and ``[t, l]`` disagreement."""
    return base.sum() + disagreement @ flip


def idw_from_sq_distances(sq: Tensor, values: Tensor, anchor_weights: Optional[Tensor] = None) -> Tensor:
    """Shepard interpolation (power 1) from squared distances ``[t]`` and values ``[t]``; an
    anchor of weight ``w`` (``anchor_weights``, default 1 each) counts as ``w`` coinciding ones."""
    sq = sq.clamp_min(0.0)
    hit = sq <= 0
    safe = torch.where(hit, torch.ones_like(sq), sq)
    dist = safe.sqrt()
    # Scale by the smallest distance (a constant for autograd: the ratio is scale-free) so the
    # weights lie in (0, 1] and cannot overflow when the point nearly sits on an anchor.
    weights = dist.detach().min() / dist
    weights = torch.where(hit.any(), hit.to(weights.dtype), weights)
    if anchor_weights is not None:
        weights = weights * anchor_weights
    return (weights * values).sum() / weights.sum()


def gradient_scale(grad_scale, harmonic: Tensor, total_push: Callable[[], Tensor], need_push: bool = False):
    """The factor on the interpolation's gradient for ``grad_scale`` (see
    :func:`uniloss.functional.uniloss`): the harmonic distance (``"distance"``), ``1 / push`` with
    ``push = sum_k |d g~ / d c_k|`` from ``total_push()`` (``"normalized"``; 1 where the push is
    zero), their minimum (``"bounded"``), or the number given.

    Returns ``(scale, push)``: ``push`` the interpolation's total push once scaled,
    ``scale * sum_k |d g~ / d c_k|`` (detached), where ``need_push`` asks for it or the scale
    measured it anyway, else ``None``."""
    if grad_scale not in ("normalized", "bounded"):
        scale = harmonic if grad_scale == "distance" else float(grad_scale)
        return scale, (total_push() * scale if need_push else None)
    push = total_push()
    # A push below sqrt(tiny) (saturated comparisons: sigmoid tails underflow) counts as none: 1 / push
    # would reach 1e154 (float64) or more and overflow the gradient's intermediate sums to inf and NaN.
    floor = torch.finfo(push.dtype).tiny ** 0.5
    unit = torch.where(push >= floor, push.clamp_min(floor).reciprocal(), 1.0)  # (1.0 / x: reciprocal, then * 1)
    scale = torch.minimum(unit, harmonic) if grad_scale == "bounded" else unit
    return scale, push * scale


def step_factor(pull_push: Tensor, interp_push: Tensor, margins: bool = False) -> Tensor:
    """``step="pull"``: the factor ``P / (P + I)`` on the whole gradient (the interpolation's, total
    push ``I``, and the pull's, ``P``), so that a step has the pull's size and the direction of
    their sum (0 where both pushes are zero: there is no step to size). Detached, a 0-dim tensor.

    Both pushes are measured on the variables the pull is taken on. ``interp_push`` is the
    interpolation's push on the comparisons; a pull per run or per comparison is on them too.
    ``margins``: the pull is on per-sample margins (:attr:`uniloss.Structure.margins`: binary
    labels, whose comparisons are each a positive's score minus a negative's), so ``P`` is a push
    on the scores, and a comparison's push moves two scores: ``I`` is then twice
    ``interp_push``, its push on the scores (exactly, where no two pushes on one score cancel: AP's
    and AUROC's all push a positive up and a negative down). Before 0.9 ``I`` was the push on the
    comparisons there too, so a step on AP was 1.4-1.6x binary cross-entropy's at the same rate
    (``docs/results/metric-wins/step-size.md``)."""
    # (P + 2 I in one call: 2 I is exact, so the sum rounds once either way)
    total = torch.add(pull_push, interp_push, alpha=2.0) if margins else pull_push + interp_push
    return pull_push / total.clamp_min(torch.finfo(total.dtype).tiny)  # 0 / tiny where both are zero: no step


NEARBY = ("all", "informative")
PULL_PER = ("sample", "run", "comparison")
STEPS = ("sum", "pull")
PULL_WEIGHTS = ("metric", "equal")


def pull_cost(c: Optional[Tensor], best: Optional[Tensor], temperature, runs=None, rows: int = 1,
              num_valid: Optional[Tensor] = None, denominator: Optional[int] = None, with_push: bool = False,
              weights: Optional[Tensor] = None, per: Optional[Tensor] = None, with_grad: bool = False):
    r"""The pull toward the best configuration: the cost whose gradient the engine adds to the
    interpolation's (``pull`` of :func:`uniloss.functional.uniloss`). With
    ``z_k = -(2 best_k - 1) c_k / tau`` (``best`` ``None``: every bit 1),

    * per comparison (``runs`` ``None``): ``sum_k softplus(z_k) / l``: the cross-entropy of each
      comparison being right (per-sample margins ``[n, B]``, several a sample: divided by ``n``);
    * per run (``runs``: a :class:`uniloss._structured.Runs`):
      ``sum_s log(1 + sum_{k in run s} exp(z_k)) / max(S, rows)``: the cross-entropy of every
      comparison of the run being right, a soft maximum over the run's comparisons, averaged over
      the runs, or over the batch's ``rows`` samples where runs are fewer (AP's positives share
      the negatives: divided by ``S`` alone, one negative above every positive would take the
      pull of all runs, up to one per step against cross-entropy's ``1 / n``). For accuracy's
      runs (a sample's ``C - 1`` comparisons ``s_y - s_j``) it is cross-entropy on the logits,
      exactly.

    ``num_valid``: a static layout's number of real comparisons (its padding, ``c = +inf`` and
    best 1, costs exactly 0, and ``l`` and ``S`` count only the real comparisons and the runs that
    hold one, or, where the layout's runs say so (``runs.real``), the exact layout's runs, empty
    ones included: PCK's positive pixels of a joint without a negative one). ``denominator``:
    divide by it instead (the block-by-block path, whose ``c`` is one block of a call: the whole
    call's count). Differentiable in ``c``; a 0-dim tensor.

    ``with_push``: return ``(cost, push)``, ``push = sum_k |d cost / d c_k|`` in closed form
    (detached): ``sum_k sigmoid(z_k) / (l tau)`` per comparison, ``sum_s (1 - exp(-lse_s)) / (D tau)``
    per run (``lse_s`` the run's term, ``D`` the denominator).

    ``per``: the runs' ``[S]`` terms ``log(1 + sum_k exp(z_k))`` in closed form
    (:attr:`uniloss.Structure.run_pull`; exact layouts only): ``c`` and ``best`` are then not read.

    ``with_grad`` (with ``with_push``; call it under ``torch.no_grad()``): return ``(push, grad)``
    without the cost (the chain's node, its one caller, reports the metric's value, not the
    pull's: three operator calls a step less), ``grad`` the cost's gradient in closed form, in
    ``c`` (``[l]``: ``sigmoid(z_k)`` per comparison, the run's softmax ``exp(z_k - lse_s)`` per
    run, times ``dz_k / dc_k`` over the denominator), or in ``per`` where it is given (``[S]``:
    the weights over the denominator).
    """
    if per is None:
        assert c is not None  # the comparisons, where the runs' terms are not given
        z = -c if best is None else (1.0 - best.to(c.dtype) * 2.0) * c
        if isinstance(temperature, Tensor) or temperature != 1.0:
            z = z / temperature
    if runs is None:
        assert c is not None  # (the runs' terms come with runs)
        total = None if with_grad else torch.nn.functional.softplus(z).sum()
        if with_push or with_grad:
            with torch.no_grad():
                soft = torch.sigmoid(z)
                pushes = soft.sum()
        if denominator is not None:
            count: Union[int, Tensor] = denominator
        else:
            # (margins [n, B], several a sample: their terms add, averaged over the samples)
            count = (c.shape[0] if c.dim() == 2 else c.numel()) if num_valid is None else num_valid.clamp_min(1)
    else:
        num = runs.num
        if num == 0:  # no run (a static layout's padding alone): no pull
            like = per if per is not None else c
            assert like is not None
            zero = like.new_zeros(())
            if with_grad:
                return zero.detach(), torch.zeros_like(like)
            return (zero, zero.detach()) if with_push else zero
        # A static layout's runs count those of the exact layout where it says how many
        # (``runs.real``), else those that hold a real comparison.
        occupied: Union[int, Tensor] = num if num_valid is None or runs.real is None else runs.real
        counted = num_valid is not None and runs.real is None
        given = per is not None
        if per is not None:  # given in closed form
            pass
        elif runs.width is not None:  # log(1 + sum exp(z)) per run: a logsumexp with a 0 in front
            zz = z.view(num, runs.width)
            per = torch.logsumexp(torch.nn.functional.pad(zz, (1, 0)), 1)
            if counted:
                occupied = torch.isfinite(zz.detach()).any(1).sum()
        else:
            assert c is not None
            ids = runs.run_ids(c.numel(), c.device)  # (a static layout's padding past the runs' ends: in the last)
            top = z.new_zeros(num).scatter_reduce(0, ids, z.detach(), "amax", include_self=True)
            inner = z.new_zeros(num).index_add(0, ids, (z - top[ids]).exp())
            per = top + (inner + (-top).exp()).log()  # the same, stable
            if counted:
                real = z.new_zeros(num).index_add(0, ids, torch.isfinite(z.detach()).to(z.dtype))
                occupied = (real > 0).sum()
        total = None if with_grad else per.sum() if weights is None else (per * weights).sum()
        if with_push or with_grad:  # the softmax mass off the run's 0: 1 - exp(-lse) (expm1: exact for a tiny lse)
            with torch.no_grad():
                if weights is None:
                    pushes = per.neg().expm1_().sum().neg_()
                else:
                    pushes = (per.neg().expm1_().neg_() * weights).sum()
        if denominator is not None:
            count = denominator
        elif isinstance(occupied, Tensor):
            count = occupied.clamp_min(rows)
        else:
            count = max(occupied, rows)
    cost = None if total is None else total / count
    if not (with_push or with_grad):
        return cost
    scaled = isinstance(temperature, Tensor) or temperature != 1.0
    with torch.no_grad():
        push = pushes / count
        if scaled:
            push = push / temperature
    if not with_grad:
        return cost, push
    # d cost / dz_k over the denominator, times dz_k / dc_k = -1 / tau where best_k is 1 (+1 where 0):
    # the scalars folded into one factor, a pass over the comparisons each
    if runs is not None and given:  # d cost / d per: the weights
        terms = cast(Tensor, per)
        return push, (torch.ones_like(terms) if weights is None else weights.to(terms.dtype)) / count
    factor = -1.0 / (count if isinstance(count, int) else count.to(z.dtype))
    if scaled:
        factor = factor / temperature
    if runs is None:
        grad = soft.mul_(factor)  # softplus' = sigmoid
    else:
        terms = cast(Tensor, per)  # (per run: computed above)
        if runs.width is not None:  # the run's softmax
            grad = (zz - terms[:, None]).exp_().mul_(factor if weights is None else weights[:, None] * factor).view(-1)
        else:
            grad = (z - terms[ids]).exp_().mul_(factor if weights is None else weights[ids] * factor)
    return push, (grad if best is None else torch.where(best, grad, grad.neg()))


def anchor_weights(nearby: str, kinds, values: Tensor, metric: Tensor, sign: float) -> Optional[Tensor]:
    """``[t]`` weights of the anchors in the interpolation for the ``nearby`` rule (``None``: one
    each). ``"informative"``: a nearby anchor (the hard configuration with one wrong bit flipped
    toward best) weighs 0 unless its metric is better than the hard configuration's ``metric``
    (``sign`` is the loss's: -1 where higher is better). Such an anchor sits at Hamming distance
    one, the closest of all, and where one flip leaves the metric unchanged (a sample with several
    wrong comparisons under an argmax) it holds weight without a direction and pushes the flipped
    comparison back toward wrong (``docs/results/metric-wins/``, the nearby-anchor probe)."""
    if nearby == "all" or not any(name == "nearby" for name, _ in kinds):
        return None
    weights = torch.ones_like(values)
    row = 0
    for name, count in kinds:
        if name == "nearby":
            weights[row : row + count] = ((values[row : row + count] - metric) * -sign > 0).to(values.dtype)
        row += count
    return weights


def harmonic_distance(sq: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """The harmonic mean of the anchors' distances ``t / sum_i 1/d_i`` (detached, 0 on a hit;
    with ``weights``, ``sum_i w_i / sum_i w_i / d_i``)."""
    d = sq.detach().clamp_min(0.0).sqrt()
    if weights is None:
        return d.numel() / (1.0 / d).sum()
    return weights.sum() / (weights / d).sum()


def interpolate(u: Tensor, anchors: Tensor, values: Tensor) -> Tensor:
    """``g~(u)`` for a relaxed point ``u`` ``[l]`` in ``[0, 1]``, anchors ``[t, l]`` bool, values ``[t]``.

    A convenience over :func:`idw_from_residual` for callers that hold ``u`` itself; the engine
    works from the comparisons directly, which keeps precision when ``u`` rounds to 0 or 1.

    Example::

        >>> import torch
        >>> from uniloss import interpolate
        >>> anchors = torch.tensor([[True, True], [False, False]])
        >>> interpolate(torch.tensor([1.0, 1.0]), anchors, torch.tensor([1.0, 0.0]))
        tensor(1.)
        >>> interpolate(torch.tensor([0.5, 0.5]), anchors, torch.tensor([1.0, 0.0]))
        tensor(0.5000)
    """
    hard = u.detach() > 0.5
    r = torch.where(hard, 1.0 - u, u)
    values = values.to(r.dtype)
    return idw_from_residual(hard, r, (anchors != hard).to(r.dtype), values)


def idw_closed_form(
    sq: Tensor, values: Tensor, weights: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Shepard interpolation from squared distances, with its gradient in closed form.

    The interpolation of :func:`idw_from_sq_distances` (and the harmonic distance of
    :func:`harmonic_distance`) without autograd, for the structured engine: with
    ``rho_i = omega_i / d_i`` and ``P = sum_i rho_i``,

    .. math:: \tilde g = \frac{\sum_i \rho_i g(a_i)}{P}, \qquad
              \frac{\partial \tilde g}{\partial d_i^2} = \frac{(\tilde g - g(a_i))\,\rho_i}{2 P d_i^2},
              \qquad h = \frac{\sum_i \omega_i}{P}.

    Squared distances are clamped to the smallest normal number, so an exact hit (``d_i = 0``)
    weighs ``1 / sqrt(tiny)`` (``1e19`` in float32, ``1e154`` in float64) against distances of
    order ``1 .. sqrt(l)``: ``g~`` is then ``g(a_i)`` to the last bit and so the harmonic distance
    vanishes; the gradient is then zero, as that of :func:`idw_from_sq_distances` at a hit.

    Near a hit (``d_0`` small, not zero) ``d g~ / d d_0^2`` grows like ``1 / d_0`` (the gradient in
    ``c`` stays finite: ``d d_0^2 / dc`` is ``O(d_0)``), and ``g~ - g(a_0)`` is ``O(d_0)``; taken
    as the difference of the two, its rounding error (an ulp of ``g~``) over ``d_0^2`` overflowed
    (NaN gradients on small saturated batches). So it is taken as
    ``sum_j rho_j (g(a_j) - v_0) / P - (g(a_i) - v_0)`` with ``v_0`` the value of the nearest
    anchor, whose terms are exactly zero for the anchors that coincide with it (at most one
    configuration lies within ``1/2`` of the point, and its anchors share one value), and it is
    divided by ``d_i`` twice, not by ``d_i^2`` once.

    Args:
        sq: ``[t]`` squared distances; values: ``[t]`` metric values at the anchors.
        weights: optional ``[t]`` anchor weights ``omega`` (default 1 each): an anchor of weight
            ``w`` counts as ``w`` coinciding anchors.

    Returns:
        ``(g, dg_dsq, harmonic)``.
    """
    exact = (sq <= 0).any()
    sq = sq.clamp_min(torch.finfo(sq.dtype).tiny)
    rho = sq.rsqrt()  # at most 1 / sqrt(tiny): no overflow in the sums below
    if weights is not None:
        rho = rho * weights
    total = rho.sum()
    g = torch.dot(rho, values) / total
    if values.numel():
        # g - v relative to the nearest anchor's value (see above), then / d * rho / (2 P) / d:
        # each factor bounded, none a rounding error over a tiny d^2.
        offset = values - values.gather(0, torch.argmin(sq).reshape(1))  # gather: no host synchronisation
        d = sq.sqrt()
        grad = (torch.dot(rho, offset) / total - offset).div_(d).mul_(rho / (2.0 * total)).div_(d)
        grad.masked_fill_(exact, 0.0)
    else:
        grad = torch.empty_like(sq)
    mass = float(sq.numel()) if weights is None else weights.sum()
    return g, grad, mass / total


INTERPOLATIONS = ("anchors", "chain")


def agreement(c: Tensor, best: Tensor, temperature, all_best: bool = False) -> Tuple[Tensor, Tensor]:
    """The chain's relaxation: ``(u, v)``, the relaxed bits ``u = sigmoid(c / tau)`` and their
    agreement with the best configuration, ``v = u`` where ``best`` is 1 and ``1 - u`` where it is
    0 (``v`` is ``u`` itself where ``all_best``: every best bit 1, as AP's). Differentiable in
    ``c``. The one place the chain relaxes its comparisons (with :func:`agreement_slope`, its
    derivative); the anchors' relaxation is :func:`bit_costs`."""
    unit = not isinstance(temperature, Tensor) and temperature == 1.0
    u = torch.sigmoid(c if unit else c / temperature)
    return u, (u if all_best else torch.where(best, u, 1.0 - u))


def agreement_slope(u: Tensor, best: Tensor, temperature, all_best: bool = False) -> Tensor:
    """``dv / dc`` of :func:`agreement` at its relaxed bits ``u``: ``+-u (1 - u) / tau``, positive
    where ``best`` is 1."""
    slope = u * (1.0 - u)
    if isinstance(temperature, Tensor) or temperature != 1.0:
        slope = slope / temperature
    return slope if all_best else torch.where(best, slope, -slope)


def chain_segments(num_bits: int, points: int, max_elements: int) -> int:
    """How many segments the chain of ``num_bits`` comparisons is cut into: ``points`` (the
    extension is exact where ``num_bits <= points``), fewer where ``(segments + 1) x num_bits``
    would pass ``max_elements``, at least one and at most ``num_bits``."""
    return max(1, min(num_bits, points, max_elements // max(num_bits, 1) - 1))


def chain_extension(c: Tensor, best: Tensor, evaluate: Callable[[Tensor], Tensor], temperature,
                    segments: int, along: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                    invalid: Optional[Tensor] = None, num_valid: Optional[Tensor] = None
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""The metric's Lovász extension along the chain of its comparisons (``interpolation="chain"``).

    With ``v_k`` the relaxed bit's agreement with the best configuration (``u_k = sigmoid(c_k /
    tau)`` where ``best_k`` is 1, ``1 - u_k`` where it is 0), sorted descending, and ``S_j`` the
    configuration whose first ``j`` comparisons in that order take their best value and the rest
    the other one,

    .. math:: \tilde g(v) = g(S_0) + \sum_k v_{(k)} \bigl(g(S_k) - g(S_{k-1})\bigr),

    the piecewise-linear interpolation of ``g`` on the simplex of the cube that holds ``v`` (equal
    to ``g`` at every vertex; for a submodular ``g`` its convex closure, as Lovász-softmax is for
    IoU): each comparison is pushed by its marginal gain at the current order. ``g`` is known at
    ``segments + 1`` points of the chain (``j = 0, l / segments, ..., l``); within a segment every
    comparison gets the segment's mean gain (``segments = l``: the exact extension; the gains
    still sum to ``g(best) - g(S_0)``). The values come from ``along`` where the metric gives them
    without its bits (:attr:`uniloss.Structure.chain`, counts per run), else from one
    ``evaluate`` of the ``[segments + 1, l]`` configurations.

    Args:
        c: ``[l]`` comparisons (differentiable); best: ``[l]`` bool; evaluate: ``[t, l]`` bool ->
        ``[t]`` metric values (undefined values count as no gain; it may return more rows than
        given, e.g. of configurations it appends, which the chain does not use); temperature:
        ``tau``; segments: how many (``1 .. l``); along: optional, ``(rank [l], cuts [segments +
        1])`` -> the values ``g(S_cuts[j])`` (more rows allowed, as for ``evaluate``), in place of
        ``evaluate``; invalid, num_valid: optional, a static layout's ``[l]`` bool padding and
        0-dim number of real comparisons: the padding comes last in the chain (the metric
        ignores its bits) with no gain, and the cuts divide the real comparisons as they would
        the exact layout's.

    Returns:
        ``(g, values, gains, u)``: ``g~`` (0-dim, differentiable in ``c``), the values ``evaluate``
        (or ``along``) returned (the first ``segments + 1`` along the chain), each comparison's
        ``[l]`` gain ``d g~ / d v_k`` and the relaxed bits ``u`` (all detached but ``g``).

    Example::

        >>> import torch
        >>> from uniloss._interpolation import chain_extension
        >>> best = torch.tensor([True, True])
        >>> both = lambda bits: bits.all(1).float()  # 1 when both comparisons are right
        >>> g, values, gains, _ = chain_extension(torch.tensor([4.0, 0.0]), best, both, 1.0, 2)
        >>> values, gains  # the less certain comparison carries the whole gain
        (tensor([0., 0., 1.]), tensor([0., 1.]))
        >>> round(float(g), 4)  # its relaxed bit, sigmoid(0)
        0.5
    """
    u, v = agreement(c, best, temperature)
    with torch.no_grad():
        values, start, gains = chain_steps(v.detach(), best, evaluate, segments, along, invalid, num_valid)
    g = torch.nan_to_num(start, nan=0.0) + torch.dot(gains, v)
    return g, values, gains, u.detach()


def chain_steps(v: Tensor, best: Tensor, evaluate: Callable[[Tensor], Tensor], segments: int,
                along: Optional[Callable[[Tensor, Tensor], Tensor]] = None, invalid: Optional[Tensor] = None,
                num_valid: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`chain_extension`'s chain from the relaxed bits' agreements ``v`` ``[l]`` (detached;
    the other arguments as there): ``(values, start, gains)``, the values ``evaluate`` (or
    ``along``) returned, ``g(S_0)`` and each comparison's ``[l]`` gain, in ``v``'s dtype; then
    ``g~ = start + gains . v``, an undefined ``start`` (NaN) counted as 0."""
    l = v.numel()
    order = _chain_order(v, invalid)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(l, device=v.device)
    # (in a static layout from the number of real comparisons, a tensor: repeated cuts where
    # there are fewer than segments, each real comparison then its own segment, as exactly)
    cuts = torch.div(torch.arange(segments + 1, device=v.device) * (l if num_valid is None else num_valid),
                     segments, rounding_mode="floor")
    if along is not None:
        values = along(rank, cuts)
    else:
        agree = rank[None, :] < cuts[:, None]  # [segments + 1, l]: S_j agrees with best on its first bits
        if invalid is not None:
            agree = agree | invalid  # a static layout's padding at its best value at every point, as in the anchors
        values = evaluate(torch.where(agree, best[None], ~best[None]))
    # the steps in the wider of the values' and the comparisons' dtypes (float64 where a closed
    # form gives it: its steps are far smaller than its values)
    chain = values[: segments + 1].to(torch.promote_types(values.dtype, v.dtype))
    steps = torch.nan_to_num(chain[1:] - chain[:-1], nan=0.0, posinf=0.0, neginf=0.0).to(v.dtype)
    values, chain = values.to(v.dtype), chain.to(v.dtype)
    if segments == l and num_valid is None:  # the exact extension: comparison k's own step
        gains = steps[rank]
    else:
        segment = torch.bucketize(rank, cuts[1:], right=True).clamp_(max=segments - 1)
        gains = (steps / (cuts[1:] - cuts[:-1]).clamp_min(1).to(v.dtype))[segment]  # (a repeated cut: no step)
    if invalid is not None:
        gains = gains.masked_fill(invalid, 0.0)
    return values, chain[0], gains


def _chain_order(v: Tensor, invalid: Optional[Tensor] = None) -> Tensor:
    """The chain's order: ``v`` (in ``[0, 1]``) descending, ties by index ascending, a static
    layout's padding last: ``argsort(v, descending=True, stable=True)``. In float32 one unstable
    sort of an int64 key instead (``v``'s bits, monotone for non-negative floats, above the
    reversed index: every key distinct, so the same order), about 1.8x faster than the stable
    sort on a million comparisons."""
    if v.dtype != torch.float32 or v.numel() >= 1 << 32:
        key = v if invalid is None else v.masked_fill(invalid, -1.0)
        return torch.argsort(key, descending=True, stable=True)
    index = torch.arange(v.numel(), device=v.device)
    key = (v.view(torch.int32).to(torch.int64) << 32) | (0xFFFFFFFF - index)
    if invalid is not None:
        key = torch.where(invalid, -1 - index, key)  # below every real key, in index order
    return torch.argsort(key, descending=True)


_KEYED_SORT = 1 << 14  # from this many float32 values one int64 sort beats a stable float sort (1.6x at 65,536)


def _descending(x: Tensor) -> Tensor:
    """``argsort(x, descending=True, stable=True)`` of a float ``[S]`` (any sign, infinities). In
    float32 from ``_KEYED_SORT`` values: one unstable sort of int64 keys, ``-x``'s bits made
    monotone (a negative float's magnitude bits flipped; ``-0.0`` read as ``+0.0``, to which it is
    equal) above the index, every key distinct, so the same order (1.6x faster at 65,536 values
    on a CPU core, slower below a few thousand)."""
    if x.dtype != torch.float32 or x.numel() < _KEYED_SORT or x.numel() >= 1 << 32:
        return torch.argsort(x, descending=True, stable=True)
    bits = (0.0 - x).view(torch.int32)  # (0.0 - x: -x with -0.0 as +0.0)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # ordered as the floats, as signed integers
    return torch.argsort((bits.to(torch.int64) << 32) | torch.arange(x.numel(), device=x.device))


def chain_zeros(runs, best: Tensor, rank: Tensor, cuts: Tensor, dtype: torch.dtype) -> Tensor:
    """``[P, S]``: how many 0-bits each run holds at the chain's points ``S_cuts[j]``
    (:func:`chain_extension`), for a metric of the runs' counts (:attr:`uniloss.Structure.evaluate_zeros`).

    ``S_0`` holds the opposite of ``best`` (run ``s`` has as many 0-bits as ``best`` has 1-bits
    there); the comparison at position ``i`` of the chain changes its run's count by ``1 - 2
    best`` when it takes its best value. One ``index_add`` of those changes by (segment, run) and
    a cumulative sum over the segments: ``O(l + P S)``, against ``evaluate`` of ``[P, l]`` bits.
    ``runs``: :class:`uniloss._structured.Runs` (``run_of``, ``num``)."""
    # Counted in `dtype` (floating), exact while the counts stay below 2**24 (float32's integers).
    l, p, num = rank.numel(), cuts.numel(), runs.num
    if l >= 1 << 24:
        dtype = torch.float64
    run = runs.run_of(torch.arange(l, device=rank.device))  # the run of each comparison, by index
    ones = best.to(dtype)
    start = torch.zeros(num, dtype=dtype, device=rank.device).index_add_(0, run, ones)
    # position rank_k lies in segment i: cuts[i] <= rank_k < cuts[i+1] (a static layout's padding,
    # after the last cut, in the last segment: the metric ignores its bits)
    segment = torch.bucketize(rank, cuts[1:], right=True).clamp_(max=p - 2)
    zeros = torch.zeros(p * num, dtype=dtype, device=rank.device)
    zeros[:num] = start
    zeros.index_add_(0, (segment + 1) * num + run, 1.0 - 2.0 * ones)
    return zeros.view(p, num).cumsum_(0)


def last_of_runs(v: Tensor, runs) -> Tuple[Tensor, Tensor]:
    """Each run's last comparison in the chain's order (``v`` descending, ties by index
    ascending): ``(v_last [S], last [S])``, its ``v`` (the run's least) and its index (the
    largest of the run's least ``v``); a run without bits: ``(inf, -1)``. ``O(l)``, no sort.
    ``runs``: :class:`uniloss._structured.Runs` (``width``, ``num``, ``run_ids``)."""
    l, num = v.numel(), runs.num
    index = torch.arange(l, device=v.device)
    if runs.width is not None:  # runs of equal width: a row each
        rows = v.view(num, runs.width)
        least = rows.amin(1)
        at = torch.where(rows == least[:, None], index.view(num, runs.width), -1).amax(1)
        return least, at
    ids = runs.run_ids(l, v.device)
    least = torch.full((num,), float("inf"), dtype=v.dtype, device=v.device).scatter_reduce_(0, ids, v, "amin")
    at = torch.full((num,), -1, dtype=torch.long, device=v.device)
    at.scatter_reduce_(0, ids, torch.where(v == least[ids], index, -1), "amax")
    return least, at


def run_turns(rank: Tensor, runs) -> Tensor:
    """``[S]`` the point of the chain from which each run is whole (its last comparison's
    ``rank`` plus one; 0 for a run without bits): a full chain's ``rank`` ``[l]`` in the form
    :attr:`uniloss.Structure.chain` takes with ``chain_by_runs``."""
    ids = runs.run_ids(rank.numel(), rank.device)
    return torch.zeros(runs.num, dtype=rank.dtype, device=rank.device).scatter_reduce_(0, ids, rank + 1, "amax")


def run_chain_gains(least: Tensor, last: Tensor, closed_form: Callable[[Tensor, int], Tensor],
                    dtype: torch.dtype, in_order: bool = False) -> Tuple[Tensor, Tensor]:
    """The chain of a metric of whole runs (:attr:`uniloss.Structure.chain_by_runs`) from its
    runs' last comparisons (:func:`last_of_runs`): ``(values [S + 1], gains [S])``, the metric
    where the first ``j`` runs in the chain's order are whole and each run's last comparison's
    gain (0 for a run without bits). The runs are ordered as their last comparisons are in the
    full chain (``v`` descending, index ascending; runs without bits first, whole from the
    start), so the steps are the full chain's at the points where it changes, and ``g~ = values[0]
    + sum_s gains_s v_last_s`` is the exact extension. Two sorts of ``S`` (one where ``in_order``:
    ``last`` is increasing, as for runs of equal width, none without bits)."""
    num = last.numel()
    if in_order:  # the runs' last comparisons already in index order (runs of equal width: none empty)
        order = _descending(least)
        empty = None
    else:
        by_index = torch.argsort(last)
        order = by_index.index_select(0, _descending(least.index_select(0, by_index)))
        empty = last < 0
    position = torch.empty_like(order)
    position[order] = torch.arange(1, num + 1, device=last.device)
    values = closed_form(position if empty is None else torch.where(empty, 0, position), num)
    chain = values[: num + 1].to(torch.promote_types(values.dtype, dtype))
    steps = torch.nan_to_num(chain[1:] - chain[:-1], nan=0.0, posinf=0.0, neginf=0.0).to(dtype)
    if not num:
        gains = steps
    elif empty is None:
        gains = steps[position - 1]
    else:
        gains = steps[(position - 1).clamp_min(0)].masked_fill(empty, 0.0)
    return chain.to(dtype), gains
