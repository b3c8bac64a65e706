"""MIL models: outputs, ragged batching without padding, registry, CLAM's instance loss."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from wsimm.errors import ConfigError  # noqa: E402
from wsimm.mil import BagNorm, create_model, list_models, segment_softmax  # noqa: E402

MODELS = ["mean", "max", "abmil", "abmil_gated", "clam_sb", "clam_mb", "transmil"]


def test_registry_lists_every_architecture_and_suggests_close_names():
    assert set(MODELS) <= set(list_models())
    with pytest.raises(ConfigError, match="did you mean abmil"):
        create_model("abmill", 8, 2)


@pytest.mark.parametrize("name", MODELS)
def test_batched_ragged_bags_equal_one_bag_at_a_time(name):
    torch.manual_seed(0)
    m = create_model(name, 16, 3).eval()
    bags = [torch.randn(n, 16) for n in (5, 40, 17)]
    x = torch.cat(bags)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([len(b) for b in bags]))
    with torch.no_grad():
        out = m(x, batch, 3)
        singles = [m(b) for b in bags]
    assert out.logits.shape == (3, 3)
    for i, s in enumerate(singles):
        torch.testing.assert_close(out.logits[i], s.logits[0], atol=1e-5, rtol=1e-4)
        a = out.attention[batch == i]
        torch.testing.assert_close(a, s.attention, atol=1e-5, rtol=1e-4)
        # attention sums to one per bag (per branch)
        torch.testing.assert_close(a.sum(0), torch.ones_like(a.sum(0)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter_used(name):
    torch.manual_seed(0)
    m = create_model(name, 8, 2).train()
    x = torch.randn(60, 8)
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([25, 35]))
    out = m(x, batch, 2, y=torch.tensor([0, 1]))
    loss = out.logits.sum() + (out.aux_loss if out.aux_loss is not None else 0)
    loss.backward()
    grads = [p.grad for n, p in m.named_parameters() if not n.startswith("instance")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_clam_instance_loss_only_with_labels_in_training():
    m = create_model("clam_sb", 8, 2)
    x = torch.randn(30, 8)
    assert m.train()(x, y=torch.tensor([1])).aux_loss is not None
    assert m.eval()(x, y=torch.tensor([1])).aux_loss is None
    assert m.train()(x).aux_loss is None


def test_grouped_bags_average_slide_embeddings_per_patient():
    torch.manual_seed(0)
    m = create_model("abmil", 8, 2).eval()
    a, b = torch.randn(10, 8), torch.randn(20, 8)
    x = torch.cat([a, b])
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([10, 20]))
    with torch.no_grad():
        out = m(x, batch, 2, group=torch.tensor([0, 0]), n_groups=1)
        emb = (m(a).embedding + m(b).embedding) / 2
    torch.testing.assert_close(out.embedding, emb)


def test_wrong_feature_width_is_a_clear_error():
    m = create_model("abmil", 8, 2)
    with pytest.raises(ConfigError, match="another encoder"):
        m(torch.randn(5, 9))


def test_segment_softmax_matches_per_bag_softmax():
    s = torch.randn(12)
    batch = torch.tensor([0] * 5 + [1] * 7)
    out = segment_softmax(s, batch, 2)
    torch.testing.assert_close(out[:5], s[:5].softmax(0))
    torch.testing.assert_close(out[5:], s[5:].softmax(0))


def test_bag_norm_standardises_over_the_batch_and_keeps_running_statistics():
    torch.manual_seed(0)
    bn = BagNorm(momentum=0.5)
    emb = torch.randn(6, 4) * 0.1 + 3.0  # bags that differ by a small fraction of their scale
    z = bn(emb)
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(z.var(0, unbiased=False), torch.ones(4), atol=1e-2)
    assert torch.allclose(bn.running_mean, 0.5 * emb.mean(0))
    # a stand-in row (weight 0) changes neither the statistics nor the other rows
    w = torch.tensor([1.0, 1, 1, 1, 1, 1, 0])
    z2 = BagNorm()(torch.cat([emb, torch.full((1, 4), 100.0)]), w)
    assert torch.allclose(z2[:6], z, atol=1e-5)
    # one bag: running statistics, left as they were
    before = bn.running_mean.clone()
    one = bn(emb[:1])
    assert torch.allclose(bn.running_mean, before)
    assert torch.allclose(one, (emb[:1] - before) / torch.sqrt(bn.running_var + bn.eps))
    bn.eval()
    assert torch.allclose(bn(emb), (emb - before) / torch.sqrt(bn.running_var + bn.eps))


@pytest.mark.parametrize("name", ["abmil", "clam_mb", "transmil"])
def test_bag_norm_statistics_travel_with_the_state_dict(name):
    torch.manual_seed(1)
    m = create_model(name, 8, 2, dropout=0.0)
    x, batch = torch.randn(40, 8), torch.arange(40) % 5
    for _ in range(3):
        m(x, batch, 5)  # training mode: batch statistics, running ones updated
    m.eval()
    again = create_model(name, 8, 2, dropout=0.0)
    again.load_state_dict(m.state_dict())
    again.eval()
    assert torch.equal(again(x, batch, 5).logits, m(x, batch, 5).logits)
    assert not torch.equal(m.bag_norm.running_var, torch.ones_like(m.bag_norm.running_var))
    assert create_model(name, 8, 2, bag_norm=False).bag_norm is None


def test_bag_norm_under_bfloat16_autocast_keeps_float32_statistics():
    m = create_model("abmil", 8, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(40, 8), torch.arange(40) % 4, 4)
    assert torch.isfinite(out.logits.float()).all()
    assert m.bag_norm.running_mean.dtype == torch.float32
