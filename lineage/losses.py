"""The Knowledge Inheritance loss (papers/001 Eq. 2–3), chunked and memory-lean.

    L = mean over target positions of (1 − α)·CE(y, softmax(z)) + α·τ²·KL(P_T^τ ‖ softmax(z/τ))

Memory design (why a custom autograd Function). Autograd through the naive formula keeps
several full-vocabulary float32 tensors alive until backward (log_softmax at 1 and at τ, the
teacher distribution, the products), i.e. 3–5 × N × V × 4 bytes; ``F.cross_entropy`` alone
keeps one (its log-softmax). Here the gradient is closed-form,

    dL/dz = [(1 − α)·(softmax(z) − onehot(y)) + α·τ·(softmax(z/τ) − q)] / n,

(q: the teacher distribution at τ, scattered on the vocabulary; the top-K case has the same
form because q sums to 1 over its K entries), so the forward pass walks the target rows
chunk by chunk, computes the loss terms in float32 and writes the gradient rows straight into
one buffer in the logits' dtype. Only that buffer (n_targets × V) lives until backward, which
scales it by the incoming gradient in place. Extra peak memory is therefore that buffer plus
about four chunk × V float32 work tensors — ``benchmarks/bench_loss.py`` measures it against
``F.cross_entropy``. The price: the teacher and α are constants (no gradient to them),
``self_loss``/``ki_loss`` are returned detached (they are for logging), and the graph can be
backpropagated once (``retain_graph`` reuse raises).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["KILoss", "ki_loss"]


@dataclass(frozen=True)
class KILoss:
    """The KI loss of one batch; all tensors are float32 scalars."""

    total: Tensor  # scalar, differentiable w.r.t. the student logits
    self_loss: Tensor  # scalar, detached: mean CE over targets (before the (1 − α) weight)
    ki_loss: Tensor  # scalar, detached: mean τ²·KL over targets (before the α weight)
    n_targets: int  # positions with labels != ignore_index


@dataclass(frozen=True)
class _Teacher:
    """Teacher inputs for the target rows. ``packed``: row i belongs to the i-th target."""

    full: Tensor | None  # [..., V] or packed [n, V]
    topk_indices: Tensor | None  # [..., K] or packed [n, K] long
    topk_logits: Tensor | None  # [..., K] or packed [n, K]
    packed: bool


def _teacher_full_terms(t: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Teacher distribution at τ and its negative entropy, from full logits.

    t: [c, V] float32, consumed (modified in place). Returns q [c, V] and Σ q·log q [c].
    """
    m = t.amax(1, keepdim=True)
    u = t.sub_(m).div_(tau)  # shifted scaled logits, in place
    q = u.exp()
    s = q.sum(1, keepdim=True)
    # Σ q log q = Σ q·u − log s; a -inf logit has q = 0, clamp so 0·(-inf) is not NaN.
    u.clamp_(min=torch.finfo(u.dtype).min)
    q_dot_u = torch.bmm(q.unsqueeze(1), u.unsqueeze(2)).view(-1, 1)  # no [c, V] product tensor
    neg_entropy = (q_dot_u / s - s.log()).squeeze(1)
    return q.div_(s), neg_entropy


def _chunk_terms(
    z: Tensor,
    y: Tensor,
    w_ce: Tensor,
    w_kl: Tensor,
    tau: float,
    teacher: tuple[str, Tensor, Tensor | None] | None,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-row CE and τ²·KL for one chunk, and (optionally) the weighted gradient rows.

    z: [c, V] float32 student logits, consumed (modified in place); y: [c] long;
    w_ce, w_kl: [c, 1] gradient weights (1 − α)/n and α·τ/n;
    teacher: ("full", logits [c, V] float32, None) or ("topk", logits [c, K], indices [c, K]).
    Returns ce [c], kl [c] (already times τ²), grad [c, V] float32 or None.
    """
    z_y = z.gather(1, y.unsqueeze(1))
    m = z.amax(1, keepdim=True)
    p = (z - m).exp_()  # softmax(z) numerator, [c, V]
    s = p.sum(1, keepdim=True)
    ce = (m + s.log() - z_y).squeeze(1)
    kl = torch.zeros_like(ce)
    q: Tensor | None = None
    p_tau, s_tau = p, s
    if teacher is not None:
        kind, t_logits, t_idx = teacher
        u = z.sub_(m).div_(tau)  # student shifted logits at τ, in place: log p_τ = u − log s_τ
        if tau != 1.0:
            p_tau = u.exp()
            s_tau = p_tau.sum(1, keepdim=True)
        u.clamp_(min=torch.finfo(u.dtype).min)  # 0·(-inf) guard, as for the teacher
        if kind == "full":
            q, neg_entropy = _teacher_full_terms(t_logits, tau)
            q_dot_u = torch.bmm(q.unsqueeze(1), u.unsqueeze(2)).view(-1)
        else:
            assert t_idx is not None
            q = torch.softmax(t_logits.div(tau), dim=1)  # renormalised over the K entries
            neg_entropy = torch.xlogy(q, q).sum(1)
            q_dot_u = (q * u.gather(1, t_idx)).sum(1)
        kl = (neg_entropy - q_dot_u + s_tau.log().squeeze(1)) * (tau * tau)
    if not need_grad:
        return ce, kl, None
    # Gradient rows, built in place in p: w_ce·(p − onehot) + w_kl·(p_τ − q).
    shared = p_tau is p  # τ = 1 (or no teacher): one softmax serves both terms
    g = p.mul_((w_ce + w_kl) / s if shared else w_ce / s)
    if not shared:
        g.add_(p_tau.mul_(w_kl / s_tau))
    g.scatter_add_(1, y.unsqueeze(1), -w_ce)
    if q is not None:
        assert teacher is not None
        if teacher[0] == "full":
            g.sub_(q.mul_(w_kl))
        else:
            assert teacher[2] is not None
            g.scatter_add_(1, teacher[2], -(q * w_kl))
    return ce, kl, g


def _teacher_rows(teacher: _Teacher | None, idx: tuple[Tensor, ...], span: slice) -> Any:
    """The teacher inputs of one chunk of target rows, as float32 work tensors."""
    if teacher is None:
        return None

    def rows(x: Tensor) -> Tensor:
        return x[span] if teacher.packed else x[idx]

    if teacher.full is not None:
        return ("full", rows(teacher.full).float(), None)
    assert teacher.topk_logits is not None and teacher.topk_indices is not None
    return ("topk", rows(teacher.topk_logits).float(), rows(teacher.topk_indices).long())


class _KILossFunction(torch.autograd.Function):
    """Forward computes loss and gradient chunk by chunk; backward only scales the gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        positions: Tensor,
        y: Tensor,
        alpha: Tensor,
        teacher: _Teacher | None,
        tau: float,
        chunk: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """logits [..., V]; positions [n, ndim-1] (row-major target positions); y, alpha [n]."""
        n, vocab = positions.shape[0], logits.shape[-1]
        need_grad = bool(ctx.needs_input_grad[0])
        grad_rows = logits.new_empty((n, vocab)) if need_grad else None
        sums = torch.zeros(3, dtype=torch.float32, device=logits.device)  # total, CE, KL
        # Autocast would run bmm in bf16; every op here is meant to be float32.
        with torch.autocast(logits.device.type, enabled=False):
            for start in range(0, n, chunk):
                span = slice(start, min(start + chunk, n))
                idx = positions[span].unbind(1)
                a = alpha[span].unsqueeze(1)
                z = logits[idx].float()  # advanced indexing copies: z is ours to overwrite
                ce, kl, g = _chunk_terms(
                    z,
                    y[span],
                    (1.0 - a) / n,
                    a * tau / n,
                    tau,
                    _teacher_rows(teacher, idx, span),
                    need_grad,
                )
                a1 = a.squeeze(1)
                sums += torch.stack([((1.0 - a1) * ce + a1 * kl).sum(), ce.sum(), kl.sum()])
                if grad_rows is not None and g is not None:
                    grad_rows[span] = g  # casts to the logits' dtype
        ctx.grad_rows = grad_rows
        ctx.logits_shape = logits.shape
        ctx.save_for_backward(positions)
        total, ce_mean, kl_mean = (sums / max(n, 1)).unbind()
        ctx.mark_non_differentiable(ce_mean, kl_mean)
        return total, ce_mean, kl_mean

    @staticmethod
    def backward(ctx: Any, g_total: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_rows: Tensor | None = ctx.grad_rows
        if grad_rows is None:
            raise RuntimeError("ki_loss supports a single backward pass (retain_graph reuse)")
        ctx.grad_rows = None  # free the buffer as soon as this pass is done with it
        (positions,) = ctx.saved_tensors
        shape = ctx.logits_shape
        grad_rows.mul_(g_total.to(grad_rows.dtype))
        if positions.shape[0] == math.prod(shape[:-1]):
            # Every position is a target: rows are already in row-major order.
            grad = grad_rows.view(shape)
        else:
            grad = grad_rows.new_zeros(shape)
            grad[positions.unbind(1)] = grad_rows
        return grad, None, None, None, None, None, None


def _alpha_rows(alpha: float | Tensor, lead: torch.Size, mask: Tensor, dev: torch.device) -> Tensor:
    """α at each target position, [n] float32; checks 0 ≤ α ≤ 1."""
    if isinstance(alpha, Tensor):
        try:
            full = torch.broadcast_to(alpha.detach().to(dev, torch.float32), lead)
        except RuntimeError as exc:
            raise ValueError(
                f"alpha of shape {tuple(alpha.shape)} does not broadcast to {tuple(lead)}"
            ) from exc
        rows = full[mask]
        if rows.numel() and not bool(((rows >= 0) & (rows <= 1)).all()):
            raise ValueError("alpha must lie in [0, 1] at every target position")
        return rows
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    return torch.full((int(mask.sum()),), float(alpha), dtype=torch.float32, device=dev)


def _check_teacher(
    lead: torch.Size,
    vocab: int,
    n: int,
    full: Tensor | None,
    topk_indices: Tensor | None,
    topk_logits: Tensor | None,
) -> _Teacher | None:
    """Validates the teacher arguments and decides their layout (per position or packed)."""
    if full is not None and (topk_indices is not None or topk_logits is not None):
        raise ValueError("give either teacher_logits or the top-K pair, not both")
    if (topk_indices is None) != (topk_logits is None):
        raise ValueError("teacher_topk_indices and teacher_topk_logits go together")
    given = full if full is not None else topk_indices
    if given is None:
        return None
    assert given is not None
    if topk_logits is not None and topk_logits.shape != given.shape:
        raise ValueError(
            f"top-K indices {tuple(given.shape)} and logits {tuple(topk_logits.shape)} differ"
        )
    width = given.shape[-1] if given.dim() else 0
    if full is not None and width != vocab:
        raise ValueError(f"teacher_logits have {width} classes, the student {vocab}")
    if full is None and not 1 <= width <= vocab:
        raise ValueError(f"top-K width must be in [1, {vocab}], got {width}")
    if given.shape[:-1] == lead:
        packed = False
    elif given.dim() == 2 and given.shape[0] == n:
        packed = True  # one row per target position, row-major (the teacher cache's layout)
    else:
        raise ValueError(
            f"teacher rows {tuple(given.shape[:-1])} match neither the labels {tuple(lead)} "
            f"nor the {n} target positions"
        )
    return _Teacher(
        full.detach() if full is not None else None,
        topk_indices.detach() if topk_indices is not None else None,
        topk_logits.detach() if topk_logits is not None else None,
        packed,
    )


def ki_loss(
    student_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float | Tensor,
    temperature: float = 1.0,
    teacher_logits: Tensor | None = None,
    teacher_topk_indices: Tensor | None = None,
    teacher_topk_logits: Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = 4096,
) -> KILoss:
    """KI loss (papers/001 Eq. 3): mean over targets of (1 − α)·CE + α·τ²·KL(P_T^τ ‖ P_S^τ).

    student_logits: [..., V] (e.g. [B, T, V] or [N, V]; fp32, bf16 or fp16; need not be
        contiguous, e.g. a causal shift ``logits[:, :-1]``).
    labels: [...] long, aligned with the logits; ``ignore_index`` marks positions without a
        target (padding, unmasked MLM positions), which never count.
    alpha: float or tensor broadcastable to [...] (per-position inheritance rate; a batch may
        mix shards with different teachers or rates), every value in [0, 1].
    teacher_logits: [..., V] full teacher logits, or packed [n_targets, V].
    teacher_topk_indices / teacher_topk_logits: [..., K] (or packed [n_targets, K], one row per
        target in row-major order — the teacher cache's layout). The teacher is renormalised
        over its K entries at τ; the student's log-probabilities use the full-vocabulary
        log-sum-exp at τ, gathered at the teacher's indices.
    chunk_size: target rows per work chunk (None: all at once); bounds the float32 workspace
        to about 4 × chunk_size × V × 4 bytes.
    With no teacher, α must be 0 (the loss is then plain cross-entropy).
    All-masked batch: every field is 0 and the gradient is zero (no NaN).
    """
    if student_logits.dim() < 2:
        raise ValueError(f"student_logits must be [..., V], got {tuple(student_logits.shape)}")
    lead, vocab = student_logits.shape[:-1], student_logits.shape[-1]
    if labels.shape != lead:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(lead)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    dev = student_logits.device
    mask = labels != ignore_index
    positions = mask.nonzero()  # [n, ndim-1], row-major
    n = positions.shape[0]
    teacher = _check_teacher(
        lead, vocab, n, teacher_logits, teacher_topk_indices, teacher_topk_logits
    )
    alpha_rows = _alpha_rows(alpha, lead, mask, dev)
    if teacher is None and bool((alpha_rows != 0).any()):
        raise ValueError("alpha must be 0 when no teacher is given (nothing to inherit from)")
    total, self_loss, ki = _KILossFunction.apply(
        student_logits,
        positions,
        labels[mask].long(),
        alpha_rows,
        teacher,
        float(temperature),
        chunk_size or max(n, 1),
    )
    return KILoss(total=total, self_loss=self_loss, ki_loss=ki, n_targets=n)
