"""The Knowledge Inheritance loss (papers/001 Eq. 2–3), chunked and memory-lean.

    L = mean over target positions of (1 − α)·CE(y, softmax(z)) + α·τ²·KL(P_T^τ ‖ softmax(z/τ))

or, with a ``normaliser`` M, the sum of those per-target terms divided by M: a step over several
micro-batches and processes passes the global number of targets, so the step's gradient is the
mean over all its targets (fairseq's criterion semantics) whatever their split — with MLM the
number of masked targets differs from one micro-batch to the next.

Memory design (why a custom autograd Function). Autograd through the naive formula keeps
several full-vocabulary float32 tensors alive until backward (log_softmax at 1 and at τ, the
teacher distribution, the products), i.e. 3–5 × N × V × 4 bytes; ``F.cross_entropy`` alone
keeps one (its log-softmax). Here the gradient is closed-form,

    dL/dz = [(1 − α)·(softmax(z) − onehot(y)) + α·τ·(softmax(z/τ) − q)] / n   (n, or M),

(q: the teacher distribution at τ, scattered on the vocabulary; the top-K case has the same
form because q sums to 1 over its K entries), so the forward pass walks the target rows
chunk by chunk, computes the loss terms in float32 and writes the gradient rows straight into
one buffer in the logits' dtype. Only that buffer (n_targets × V) lives until backward, which
scales it in place and hands it on as the logits' gradient. The float32 workspace is allocated
once per call: 2–4 chunk × V tensors (student logits, softmax numerator — itself the gradient
buffer for float32 logits —, and for τ ≠ 1 or a full teacher one or two more).
``benchmarks/bench_loss.py`` (CPU, N = 1024, V = 50257, fp32, chunk 256): peak extra memory
0.51× that of ``F.cross_entropy`` with a top-K teacher and 0.59× with a full one, where naive
autograd needs 2.0×; time about 1× and 1.6× of cross-entropy. The price: the teacher and α are
constants (no gradient to them), ``self_loss``/``ki_loss`` are returned detached (they are for
logging), and the graph can be backpropagated once (``retain_graph`` reuse raises).
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

    total: Tensor  # scalar, differentiable w.r.t. the student logits: Σ terms / (n or M)
    self_loss: Tensor  # scalar, detached: mean CE over targets (before the (1 − α) weight)
    ki_loss: Tensor  # scalar, detached: mean τ²·KL over targets (before the α weight)
    n_targets: int  # positions with labels != ignore_index


@dataclass(frozen=True)
class _Teacher:
    """Teacher inputs. ``packed``: row i belongs to the i-th target, else one row per position."""

    full: Tensor | None  # [..., V] or packed [n, V]
    topk_indices: Tensor | None  # [..., K] or packed [n, K] long
    topk_logits: Tensor | None  # [..., K] or packed [n, K]
    packed: bool


@dataclass(frozen=True)
class _Work:
    """Float32 work tensors [c, V] of one chunk: views of buffers allocated once per call,
    because on CPU a fresh chunk-sized allocation costs more (page faults) than the math."""

    z: Tensor  # student logits, then the shifted student logits at τ (overwritten)
    p: Tensor  # softmax(z) numerator, then the gradient rows
    t: Tensor | None  # full teacher logits, then scratch / softmax(z/τ) numerator; None if unused
    q: Tensor | None  # full teacher: its distribution at τ; None otherwise


def _rows_into(out: Tensor, x: Tensor, rows: Tensor) -> Tensor:
    """out[i] = x viewed as [-1, W], row rows[i], cast to out's dtype.

    x: [..., W] (any strides); rows: [c] long, row-major over x's leading dims; out: [c, W].
    """
    try:
        flat = x.view(-1, x.shape[-1])
    except RuntimeError:  # not viewable as rows, e.g. a causal-shift slice logits[:, :-1]
        return out.copy_(x[torch.unravel_index(rows, x.shape[:-1])])
    if flat.dtype == out.dtype:
        return torch.index_select(flat, 0, rows, out=out)
    return out.copy_(flat.index_select(0, rows))


def _teacher_full_terms(t: Tensor, q: Tensor, scratch: Tensor, tau: float) -> Tensor:
    """Teacher distribution at τ into ``q`` and its negative entropy Σ q·log q [c].

    t: [c, V] float32 teacher logits (overwritten); q, scratch: [c, V] float32 outputs/work.
    """
    m = t.amax(1, keepdim=True)
    u = t.sub_(m) if tau == 1.0 else t.sub_(m).div_(tau)  # log q = u − log s
    s = torch.exp(u, out=q).sum(1, keepdim=True)
    u.clamp_(min=torch.finfo(u.dtype).min)  # a -inf logit has q = 0: keep 0·u finite
    q_dot_u = torch.mul(q, u, out=scratch).sum(1, keepdim=True)
    q.div_(s)
    return (q_dot_u / s - s.log()).squeeze(1)


def _chunk_terms(
    work: _Work,
    y: Tensor,
    w_ce: Tensor,
    w_kl: Tensor,
    tau: float,
    topk: tuple[Tensor, Tensor] | None,
    need_grad: bool,
) -> tuple[Tensor, Tensor]:
    """Per-row CE and τ²·KL of one chunk; with ``need_grad`` the weighted gradient rows are left
    in ``work.p``: w_ce·(softmax(z) − onehot(y)) + w_kl·(softmax(z/τ) − q).

    y: [c] long; w_ce, w_kl: [c, 1] weights (1 − α)/n and α·τ/n; topk: (indices [c, K] long,
    logits [c, K] float32) or None. Returns ce [c] and kl [c] (already times τ²).
    """
    z, p, full = work.z, work.p, work.q is not None
    if full:  # first, while work.p is still free to serve as scratch
        assert work.t is not None and work.q is not None
        neg_entropy = _teacher_full_terms(work.t, work.q, p, tau)
    z_y = z.gather(1, y.unsqueeze(1))
    m = z.amax(1, keepdim=True)
    s = torch.sub(z, m, out=p).exp_().sum(1, keepdim=True)
    ce = (m + s.log() - z_y).squeeze(1)
    kl = torch.zeros_like(ce)
    p_tau, s_tau = p, s
    if full or topk is not None:
        u = z.sub_(m) if tau == 1.0 else z.sub_(m).div_(tau)  # log softmax(z/τ) = u − log s_τ
        if full:
            assert work.t is not None and work.q is not None
            q_dot_u = torch.mul(work.q, u.clamp_(min=torch.finfo(u.dtype).min), out=work.t).sum(1)
        else:
            assert topk is not None
            q_k = torch.softmax(topk[1] / tau, dim=1)  # teacher renormalised over its K entries
            neg_entropy = torch.xlogy(q_k, q_k).sum(1)
            u_k = u.gather(1, topk[0]).clamp_(min=torch.finfo(u.dtype).min)
            q_dot_u = (q_k * u_k).sum(1)
        if tau != 1.0:
            assert work.t is not None
            p_tau = torch.exp(u, out=work.t)
            s_tau = p_tau.sum(1, keepdim=True)
        kl = (neg_entropy - q_dot_u + s_tau.log().squeeze(1)) * (tau * tau)
    if need_grad:
        shared = p_tau is p  # τ = 1 (or no teacher): one softmax serves both terms
        p.mul_((w_ce + w_kl) / s if shared else w_ce / s)
        if not shared:
            p.add_(p_tau.mul_(w_kl / s_tau))
        p.scatter_add_(1, y.unsqueeze(1), -w_ce)
        if full:
            assert work.q is not None
            p.sub_(work.q.mul_(w_kl))
        elif topk is not None:
            p.scatter_add_(1, topk[0], -(q_k * w_kl))
    return ce, kl


def _workspace(
    n: int, vocab: int, chunk: int, dev: torch.device, teacher: _Teacher | None, tau: float
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Buffers [min(chunk, n), V] float32 for z, p, t, q (t and q only where needed)."""
    rows = max(min(chunk, n), 1)

    def buf() -> Tensor:
        return torch.empty((rows, vocab), dtype=torch.float32, device=dev)

    full = teacher is not None and teacher.full is not None
    t = buf() if full or (teacher is not None and tau != 1.0) else None
    return buf(), buf(), t, buf() if full else None


class _KILossFunction(torch.autograd.Function):
    """Forward computes loss and gradient chunk by chunk; backward only scales the gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        rows: Tensor,
        y: Tensor,
        alpha: Tensor,
        teacher: _Teacher | None,
        tau: float,
        chunk: int,
        normaliser: float | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """logits [..., V]; rows [n] (row-major flat indices of the targets); y, alpha [n];
        the total is divided by ``normaliser`` (None: by n)."""
        n, vocab, dev = rows.shape[0], logits.shape[-1], logits.device
        denom = float(max(n, 1) if normaliser is None else normaliser)
        need_grad = bool(ctx.needs_input_grad[0])
        grad_rows = logits.new_empty((n, vocab)) if need_grad else None
        # Float32 gradients are built right in grad_rows: one buffer fewer, no copy.
        direct = grad_rows is not None and grad_rows.dtype == torch.float32
        z_buf, p_buf, t_buf, q_buf = _workspace(n, vocab, chunk, dev, teacher, tau)
        t_rows = torch.arange(n, device=dev) if teacher is not None and teacher.packed else rows
        sums = torch.zeros(3, dtype=torch.float32, device=dev)  # total, CE, KL
        with torch.autocast(dev.type, enabled=False):  # every op here is meant to be float32
            for start in range(0, n, chunk):
                span = slice(start, min(start + chunk, n))
                c = span.stop - start
                work = _Work(
                    z=_rows_into(z_buf[:c], logits, rows[span]),
                    p=grad_rows[span] if direct and grad_rows is not None else p_buf[:c],
                    t=None if t_buf is None else t_buf[:c],
                    q=None if q_buf is None else q_buf[:c],
                )
                topk = None
                if teacher is not None and teacher.full is not None:
                    assert work.t is not None
                    _rows_into(work.t, teacher.full, t_rows[span])
                elif teacher is not None:
                    assert teacher.topk_indices is not None and teacher.topk_logits is not None
                    k = teacher.topk_indices.shape[-1]
                    idx = teacher.topk_indices.reshape(-1, k)[t_rows[span]].long()
                    topk = (idx, teacher.topk_logits.reshape(-1, k)[t_rows[span]].float())
                a = alpha[span].unsqueeze(1)
                w_ce, w_kl = (1.0 - a) / denom, a * tau / denom
                ce, kl = _chunk_terms(work, y[span], w_ce, w_kl, tau, topk, need_grad)
                a1 = a.squeeze(1)
                sums += torch.stack([((1.0 - a1) * ce + a1 * kl).sum(), ce.sum(), kl.sum()])
                if grad_rows is not None and not direct:
                    grad_rows[span] = work.p  # cast to the logits' dtype
        ctx.grad_rows = grad_rows
        ctx.logits_shape = logits.shape
        ctx.save_for_backward(rows)
        total = sums[0] / denom
        ce_mean, kl_mean = (sums[1:] / max(n, 1)).unbind()
        ctx.mark_non_differentiable(ce_mean, kl_mean)
        return total, ce_mean, kl_mean

    @staticmethod
    def backward(ctx: Any, g_total: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_rows: Tensor | None = ctx.grad_rows
        if grad_rows is None:
            raise RuntimeError("ki_loss supports a single backward pass (retain_graph reuse)")
        ctx.grad_rows = None  # free the buffer as soon as this pass is done with it
        (rows,) = ctx.saved_tensors
        shape = ctx.logits_shape
        grad_rows.mul_(g_total.to(grad_rows.dtype))
        if rows.shape[0] == math.prod(shape[:-1]):
            grad = grad_rows  # every position is a target, rows already in row-major order
        else:
            grad = grad_rows.new_zeros((math.prod(shape[:-1]), shape[-1]))
            grad.index_copy_(0, rows, grad_rows)
        return grad.view(shape), None, None, None, None, None, None, None


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
    normaliser: float | None = None,
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
    chunk_size: target rows per work chunk (None: all at once); the float32 workspace is at
        most 4 × chunk_size × V × 4 bytes (2 for a top-K teacher at τ = 1).
    normaliser: divide the total by this instead of the batch's own target count n (e.g. the
        number of targets of the whole step, over micro-batches and processes: then the step's
        gradients add up to the gradient of its global mean); ``self_loss`` and ``ki_loss``
        stay means over n.
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
    if normaliser is not None and not (math.isfinite(normaliser) and normaliser > 0):
        raise ValueError(f"normaliser must be a positive number, got {normaliser}")
    dev = student_logits.device
    mask = labels != ignore_index
    rows = mask.reshape(-1).nonzero().squeeze(1)  # [n] flat row-major target positions
    n = rows.shape[0]
    teacher = _check_teacher(
        lead, vocab, n, teacher_logits, teacher_topk_indices, teacher_topk_logits
    )
    alpha_rows = _alpha_rows(alpha, lead, mask, dev)
    if teacher is None and bool((alpha_rows != 0).any()):
        raise ValueError("alpha must be 0 when no teacher is given (nothing to inherit from)")
    total, self_loss, ki = _KILossFunction.apply(
        student_logits,
        rows,
        labels[mask].long(),
        alpha_rows,
        teacher,
        float(temperature),
        chunk_size or max(n, 1),
        normaliser,
    )
    return KILoss(total=total, self_loss=self_loss, ki_loss=ki, n_targets=n)
