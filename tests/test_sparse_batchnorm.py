"""NodeBatchNorm / node_batch_norm: BatchNorm1d over node rows, and the rule for fewer than two nodes."""

import pytest
import torch

from rounding import AUTOCAST_PARAMS, assert_within_rounding
from sparse_ops import NodeBatchNorm, node_batch_norm


def test_equals_batchnorm1d_in_training_and_eval():
    torch.manual_seed(0)
    ours, reference = NodeBatchNorm(5), torch.nn.BatchNorm1d(5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0)
        ours.bias.normal_()
    reference.load_state_dict(ours.state_dict())
    feats = torch.randn(40, 5) * 3 + 1
    for _ in range(2):
        torch.testing.assert_close(ours(feats), reference(feats))
    torch.testing.assert_close(ours.running_mean, reference.running_mean)
    torch.testing.assert_close(ours.running_var, reference.running_var)
    ours.eval(), reference.eval()
    torch.testing.assert_close(ours(feats), reference(feats))


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_nodes_in_training_use_running_stats_without_updating_them(n):
    bn = NodeBatchNorm(3)
    with torch.no_grad():
        bn.running_mean.fill_(2.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(3.0)
        bn.bias.fill_(1.0)
    feats = torch.full((n, 3), 6.0, requires_grad=True)
    out = bn.train()(feats)
    assert out.shape == (n, 3)
    torch.testing.assert_close(out, torch.full((n, 3), 3.0 * 4.0 / (4.0 + 1e-5) ** 0.5 + 1.0))
    assert torch.equal(bn.running_mean, torch.full((3,), 2.0)) and torch.equal(bn.running_var, torch.full((3,), 4.0))
    assert int(bn.num_batches_tracked) == 0
    out.sum().backward()
    assert bn.weight.grad is not None and feats.grad.shape == (n, 3)


def test_without_running_stats():
    bn = NodeBatchNorm(3, track_running_stats=False)
    assert bn(torch.zeros(0, 3)).shape == (0, 3)
    with pytest.raises(ValueError, match="single node"):
        bn(torch.zeros(1, 3))
    feats = torch.randn(6, 3)
    torch.testing.assert_close(node_batch_norm(feats, None, None, training=True),
                               torch.nn.functional.batch_norm(feats, None, None, training=True))


def test_rejects_non_node_layout():
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        NodeBatchNorm(3)(torch.zeros(2, 3, 4))


@pytest.mark.parametrize("device,dtype", AUTOCAST_PARAMS)
def test_autocast_keeps_float32_statistics(device, dtype):
    """Low-precision node features keep their dtype; the batch statistics are accumulated in float32 into the
    float32 running buffers: they equal the float64 statistics of the rounded features to float32 precision."""
    bn = NodeBatchNorm(6, momentum=1.0).to(device).train()  # momentum 1: the running stats are this batch's
    feats = (torch.randn(500, 6, generator=torch.Generator().manual_seed(0)) * 3 + 100).to(device).to(dtype)
    with torch.autocast(torch.device(device).type, dtype=dtype):
        out = bn(feats)
    assert out.dtype == dtype and bn.running_mean.dtype == torch.float32
    exact = feats.double().cpu()
    torch.testing.assert_close(bn.running_mean.cpu().double(), exact.mean(0), rtol=2 ** -20, atol=0)
    torch.testing.assert_close(bn.running_var.cpu().double(), exact.var(0), rtol=2 ** -16, atol=0)
    normalised = (exact - exact.mean(0)) / (exact.var(0, unbiased=False) + bn.eps).sqrt()
    assert_within_rounding(out, normalised, normalised.abs(), dtype, terms=1)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_forward_dense_follows_batchnorm2d(momentum):
    """The dense twin is nn.BatchNorm2d with the same parameters and bookkeeping: momentum None is BatchNorm's
    cumulative average (not 0), num_batches_tracked counts, eval uses the running statistics."""
    torch.manual_seed(0)
    ours, reference = NodeBatchNorm(3, momentum=momentum), torch.nn.BatchNorm2d(3, momentum=momentum)
    reference.load_state_dict(ours.state_dict())
    for step in range(3):
        x = torch.randn(2, 3, 4, 5) * (step + 1) + step
        torch.testing.assert_close(ours.forward_dense(x), reference(x))
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(dict(ours.named_buffers())[name], buffer)
    assert int(ours.num_batches_tracked) == 3
    ours.eval(), reference.eval()
    x = torch.randn(1, 3, 2, 2)
    torch.testing.assert_close(ours.forward_dense(x), reference(x))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ours.forward_dense(torch.randn(4, 3))
