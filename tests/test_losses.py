"""The KI loss against a straightforward reference: values, gradients, limiting cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lineage.inherit.losses import ki_loss

V = 37


def _data(seed: int, lead: tuple[int, ...] = (3, 5), k: int = 6, p_ignore: float = 0.3):
    """Student/teacher logits [*lead, V], labels with ignored positions, top-K of the teacher."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*lead, V, generator=g) * 2
    t = torch.randn(*lead, V, generator=g) * 2
    y = torch.randint(V, lead, generator=g)
    y[torch.rand(lead, generator=g) < p_ignore] = -100
    top_v, top_i = t.topk(k, dim=-1)
    return z, t, y, top_i, top_v


def _reference(
    z: Tensor,
    y: Tensor,
    alpha: float | Tensor,
    tau: float,
    t: Tensor | None = None,
    top_i: Tensor | None = None,
    top_v: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 3 written the obvious way: (total, mean CE, mean τ²·KL) over target positions."""
    mask = y != -100
    zs, ys = z.float()[mask], y[mask]
    a = torch.as_tensor(alpha, dtype=torch.float32).expand(y.shape)[mask]
    ce = F.cross_entropy(zs, ys, reduction="none")
    log_p = F.log_softmax(zs / tau, dim=-1)
    if t is not None:
        log_q = F.log_softmax(t.float()[mask] / tau, dim=-1)
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    elif top_i is not None and top_v is not None:
        log_q = F.log_softmax(top_v.float()[mask] / tau, dim=-1)
        kl = (log_q.exp() * (log_q - log_p.gather(-1, top_i[mask]))).sum(-1)
    else:
        kl = torch.zeros_like(ce)
    kl = kl * tau**2
    return ((1 - a) * ce + a * kl).mean(), ce.mean(), kl.mean()


def _grad(fn, z: Tensor) -> tuple[Tensor, Tensor]:
    z = z.detach().clone().requires_grad_(True)
    out = fn(z)
    out.backward()
    return out.detach(), z.grad


@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("mode", ["full", "topk"])
def test_matches_reference_loss_and_grad(tau: float, alpha: float, mode: str) -> None:
    z, t, y, ti, tv = _data(0)
    teacher = {"teacher_logits": t} if mode == "full" else {}
    if mode == "topk":
        teacher = {"teacher_topk_indices": ti, "teacher_topk_logits": tv}
    ref_args = (t, None, None) if mode == "full" else (None, ti, tv)
    ours, g_ours = _grad(lambda x: ki_loss(x, y, alpha=alpha, temperature=tau, **teacher).total, z)
    ref, g_ref = _grad(lambda x: _reference(x, y, alpha, tau, *ref_args)[0], z)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-7)
    parts = ki_loss(z, y, alpha=alpha, temperature=tau, **teacher)
    _, ce_ref, kl_ref = _reference(z, y, alpha, tau, *ref_args)
    torch.testing.assert_close(parts.self_loss, ce_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts.ki_loss, kl_ref, rtol=1e-5, atol=1e-6)
    assert parts.n_targets == int((y != -100).sum())


def test_alpha_zero_is_cross_entropy() -> None:
    z, _, y, _, _ = _data(1)
    ours, g_ours = _grad(lambda x: ki_loss(x, y, alpha=0.0).total, z)
    ref, g_ref = _grad(lambda x: F.cross_entropy(x.reshape(-1, V), y.reshape(-1)), z)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)


def test_alpha_one_is_scaled_kl() -> None:
    z, t, y, _, _ = _data(2)
    tau = 3.0
    mask = y != -100
    naive = (
        F.kl_div(
            F.log_softmax(z[mask] / tau, -1),
            F.log_softmax(t[mask] / tau, -1),
            log_target=True,
            reduction="batchmean",
        )
        * tau**2
    )
    out = ki_loss(z, y, alpha=1.0, temperature=tau, teacher_logits=t)
    torch.testing.assert_close(out.total, naive)
    torch.testing.assert_close(out.ki_loss, naive)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_identical_teacher_gives_zero_kl(tau: float) -> None:
    z, _, y, _, _ = _data(3)
    out = ki_loss(z, y, alpha=1.0, temperature=tau, teacher_logits=z.clone())
    assert abs(out.ki_loss.item()) < 1e-5
    z = z.clone().requires_grad_(True)
    ki_loss(z, y, alpha=1.0, temperature=tau, teacher_logits=z.detach().clone()).total.backward()
    assert z.grad is not None and z.grad.abs().max().item() < 1e-6  # KL at its minimum


def test_topk_with_k_equal_v_is_full() -> None:
    z, t, y, _, _ = _data(4)
    tv, ti = t.topk(V, dim=-1)
    full, g_full = _grad(
        lambda x: ki_loss(x, y, alpha=0.7, temperature=2.0, teacher_logits=t).total, z
    )
    topk, g_topk = _grad(
        lambda x: (
            ki_loss(
                x, y, alpha=0.7, temperature=2.0, teacher_topk_indices=ti, teacher_topk_logits=tv
            ).total
        ),
        z,
    )
    torch.testing.assert_close(topk, full)
    torch.testing.assert_close(g_topk, g_full)


@pytest.mark.parametrize("mode", ["full", "topk"])
def test_per_position_alpha(mode: str) -> None:
    z, t, y, ti, tv = _data(5)
    alpha = torch.rand(y.shape, generator=torch.Generator().manual_seed(9))
    teacher = (
        {"teacher_logits": t}
        if mode == "full"
        else {"teacher_topk_indices": ti, "teacher_topk_logits": tv}
    )
    ref_args = (t, None, None) if mode == "full" else (None, ti, tv)
    ours, g_ours = _grad(lambda x: ki_loss(x, y, alpha=alpha, temperature=1.5, **teacher).total, z)
    ref, g_ref = _grad(lambda x: _reference(x, y, alpha, 1.5, *ref_args)[0], z)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)
    # A per-sequence rate broadcasts over the sequence.
    per_seq = torch.tensor([[0.1], [0.5], [0.9]])
    ours = ki_loss(z, y, alpha=per_seq, teacher_logits=t).total
    ref = _reference(z, y, per_seq.expand(y.shape), 1.0, t)[0]
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("chunk", [1, 3, 7, None])
def test_chunked_equals_unchunked(chunk: int | None) -> None:
    z, _, y, ti, tv = _data(6, lead=(4, 6))
    kw = {"alpha": 0.4, "temperature": 2.0, "teacher_topk_indices": ti, "teacher_topk_logits": tv}
    one, g_one = _grad(lambda x: ki_loss(x, y, chunk_size=10_000, **kw).total, z)
    many, g_many = _grad(lambda x: ki_loss(x, y, chunk_size=chunk, **kw).total, z)
    torch.testing.assert_close(many, one)
    torch.testing.assert_close(g_many, g_one)


@pytest.mark.parametrize("mode", ["full", "topk"])
def test_normaliser_divides_the_sum_of_the_per_target_terms(mode: str) -> None:
    """Pieces with different target counts, each normalised by the count of the whole, add up
    to the loss and gradient of the whole (what gradient accumulation and DDP rely on)."""
    z, t, y, ti, tv = _data(19, lead=(6, 5))
    teacher = {"teacher_logits": t} if mode == "full" else {}
    kw = {"alpha": 0.3, "temperature": 2.0}
    whole, g_whole = _grad(lambda x: ki_loss(x, y, **kw, **(teacher or _topk(ti, tv))).total, z)
    n = int((y != -100).sum())
    pieces = [slice(0, 1), slice(1, 4), slice(4, 6)]  # rows holding different target counts
    assert len({int((y[p] != -100).sum()) for p in pieces}) > 1
    total, grads = torch.zeros(()), []
    for p in pieces:
        piece_teacher = {"teacher_logits": t[p]} if mode == "full" else _topk(ti[p], tv[p])
        out, grad = _grad(
            lambda x, p=p, pt=piece_teacher: ki_loss(x, y[p], normaliser=n, **kw, **pt).total,
            z[p],
        )
        total, grads = total + out, [*grads, grad]
    torch.testing.assert_close(total, whole)
    torch.testing.assert_close(torch.cat(grads), g_whole)
    # The logged terms stay each piece's own means.
    out = ki_loss(z[:1], y[:1], normaliser=n, **kw, **_topk(ti[:1], tv[:1]))
    ref = ki_loss(z[:1], y[:1], **kw, **_topk(ti[:1], tv[:1]))
    assert out.self_loss == ref.self_loss and out.ki_loss == ref.ki_loss
    torch.testing.assert_close(out.total * n, ref.total * out.n_targets)


def _topk(ti: Tensor, tv: Tensor) -> dict[str, Tensor]:
    return {"teacher_topk_indices": ti, "teacher_topk_logits": tv}


def test_all_masked_is_zero_with_zero_grad() -> None:
    z, t, y, _, _ = _data(7)
    y = torch.full_like(y, -100)
    z = z.requires_grad_(True)
    out = ki_loss(z, y, alpha=0.5, teacher_logits=t)
    assert out.n_targets == 0
    for value in (out.total, out.self_loss, out.ki_loss):
        assert value.item() == 0.0
    out.total.backward()
    assert z.grad is not None and torch.equal(z.grad, torch.zeros_like(z))


def test_leading_shape_equals_flattened() -> None:
    z, _, y, ti, tv = _data(8, lead=(2, 3, 4))
    kw = {"alpha": 0.6, "temperature": 1.7}
    a, g_a = _grad(
        lambda x: ki_loss(x, y, teacher_topk_indices=ti, teacher_topk_logits=tv, **kw).total,
        z,
    )
    flat = (z.reshape(-1, V), y.reshape(-1), ti.reshape(-1, 6), tv.reshape(-1, 6))
    b, g_b = _grad(
        lambda x: (
            ki_loss(
                x, flat[1], teacher_topk_indices=flat[2], teacher_topk_logits=flat[3], **kw
            ).total
        ),
        flat[0],
    )
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(g_a, g_b.reshape(g_a.shape))


def test_packed_teacher_rows_equal_per_position() -> None:
    """The cache stores one top-K row per target position (row-major); same loss."""
    z, _, y, ti, tv = _data(9)
    mask = y != -100
    kw = {"alpha": 0.5, "temperature": 2.0}
    per_pos, g1 = _grad(
        lambda x: ki_loss(x, y, teacher_topk_indices=ti, teacher_topk_logits=tv, **kw).total, z
    )
    packed, g2 = _grad(
        lambda x: (
            ki_loss(x, y, teacher_topk_indices=ti[mask], teacher_topk_logits=tv[mask], **kw).total
        ),
        z,
    )
    torch.testing.assert_close(packed, per_pos)
    torch.testing.assert_close(g2, g1)


def test_non_contiguous_causal_shift() -> None:
    z, t, y, _, _ = _data(10, lead=(2, 8), p_ignore=0.0)
    shifted, labels = z[:, :-1], y[:, 1:]
    assert not shifted.is_contiguous()
    ours, g_ours = _grad(
        lambda x: ki_loss(x[:, :-1], labels, alpha=0.5, teacher_logits=t[:, :-1]).total, z
    )
    ref, g_ref = _grad(lambda x: _reference(x[:, :-1], labels, 0.5, 1.0, t[:, :-1])[0], z)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)
    assert torch.equal(g_ours[:, -1], torch.zeros_like(g_ours[:, -1]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input(dtype: torch.dtype) -> None:
    z, _, y, ti, tv = _data(11)
    zh = z.to(dtype).requires_grad_(True)
    out = ki_loss(
        zh, y, alpha=0.5, temperature=2.0, teacher_topk_indices=ti, teacher_topk_logits=tv.to(dtype)
    )
    assert out.total.dtype == torch.float32
    out.total.backward()
    assert zh.grad is not None and zh.grad.dtype == dtype
    ref, g_ref = _grad(
        lambda x: _reference(x, y, 0.5, 2.0, None, ti, tv.to(dtype).float())[0], zh.float()
    )
    torch.testing.assert_close(out.total, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(zh.grad.float(), g_ref, rtol=2e-2, atol=1e-4)


def test_backward_scales_with_upstream_gradient() -> None:
    z, t, y, _, _ = _data(12)
    _, g1 = _grad(lambda x: ki_loss(x, y, alpha=0.3, teacher_logits=t).total, z)
    _, g3 = _grad(lambda x: 3.0 * ki_loss(x, y, alpha=0.3, teacher_logits=t).total, z)
    torch.testing.assert_close(g3, 3 * g1)


def test_no_grad_needed_still_computes_loss() -> None:
    z, t, y, _, _ = _data(13)
    with torch.no_grad():
        out = ki_loss(z, y, alpha=0.3, teacher_logits=t)
    torch.testing.assert_close(out.total, _reference(z, y, 0.3, 1.0, t)[0])


def test_masked_teacher_vocab_entries_do_not_give_nan() -> None:
    z, t, y, _, _ = _data(14)
    t[..., -5:] = float("-inf")  # e.g. padded vocabulary rows masked out by the teacher
    out = ki_loss(z.requires_grad_(True), y, alpha=0.5, teacher_logits=t)
    out.total.backward()
    assert torch.isfinite(out.total) and z.grad is not None and torch.isfinite(z.grad).all()
    mask = y != -100
    q = F.softmax(t[mask], -1)
    kl = (torch.xlogy(q, q) - q * F.log_softmax(z.detach()[mask], -1)).sum(-1)
    ce = F.cross_entropy(z.detach()[mask], y[mask], reduction="none")
    torch.testing.assert_close(out.total, (0.5 * ce + 0.5 * kl).mean())


def test_bad_arguments() -> None:
    z, t, y, ti, tv = _data(15)
    with pytest.raises(ValueError, match="no teacher"):
        ki_loss(z, y, alpha=0.5)
    with pytest.raises(ValueError, match="no teacher"):
        ki_loss(z, y, alpha=torch.full(y.shape, 0.1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ki_loss(z, y, alpha=1.5, teacher_logits=t)
    with pytest.raises(ValueError, match="temperature"):
        ki_loss(z, y, alpha=0.5, temperature=0.0, teacher_logits=t)
    with pytest.raises(ValueError, match="not both"):
        ki_loss(z, y, alpha=0.5, teacher_logits=t, teacher_topk_indices=ti, teacher_topk_logits=tv)
    with pytest.raises(ValueError, match="go together"):
        ki_loss(z, y, alpha=0.5, teacher_topk_indices=ti)
    with pytest.raises(ValueError, match="labels"):
        ki_loss(z, y[:, :-1], alpha=0.0)
    with pytest.raises(ValueError, match="match neither"):
        ki_loss(z, y, alpha=0.5, teacher_logits=t[:, :-1])
    with pytest.raises(ValueError, match="broadcast"):
        ki_loss(z, y, alpha=torch.ones(4), teacher_logits=t)
    with pytest.raises(ValueError, match="normaliser"):
        ki_loss(z, y, alpha=0.0, normaliser=0.0)


def test_second_backward_is_refused() -> None:
    z, t, y, _, _ = _data(16)
    z.requires_grad_(True)
    out = ki_loss(z, y, alpha=0.5, teacher_logits=t)
    out.total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="single backward"):
        out.total.backward()


def test_custom_ignore_index_and_logging_kl_at_alpha_zero() -> None:
    z, t, y, _, _ = _data(17, p_ignore=0.0)
    y[0] = 0  # with ignore_index=0 the first row and any label-0 positions drop out
    out = ki_loss(z, y, alpha=0.0, teacher_logits=t, ignore_index=0)
    y_ref = y.masked_fill(y == 0, -100)
    _, ce_ref, kl_ref = _reference(z, y_ref, 0.0, 1.0, t)
    torch.testing.assert_close(out.total, ce_ref)
    torch.testing.assert_close(out.ki_loss, kl_ref)  # still reported for logging
    assert out.ki_loss.item() > 0
