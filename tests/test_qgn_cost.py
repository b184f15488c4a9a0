"""qgn.cost: MACs against torch's own FlopCounterMode for QGN and its dense twin; time and memory of a prediction."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from qgn import QGNConfig, build_model
from qgn.cost import dense_conv_macs, measure_predict, peak_memory, prediction_macs
from qgn.predict import predict


def small_model(kind: str, **overrides):
    torch.manual_seed(0)
    values = dict(num_classes=4, depth=3, model=kind, encoder_channels=(8, 12), decoder_channels=(12, 10, 8, 6),
                  backend="torch")
    values.update(overrides)
    return build_model(QGNConfig(**values)).eval()


def counted_macs(model, images, **knobs) -> tuple[int, object]:
    """MACs of a prediction as torch counts them (FlopCounterMode: 2 FLOPs per multiply-accumulate of every
    convolution and matmul it dispatches) - an independent count: it sees the ops that actually ran."""
    with FlopCounterMode(display=False) as counter:
        prediction = predict(model, images, **knobs)
    return counter.get_total_flops() // 2, prediction


@pytest.mark.parametrize("kind", ["qgn", "dense"])
@pytest.mark.parametrize("knobs", [{}, {"max_depth": 1}, {"threshold": 0.0}, {"threshold": 0.3, "budget": 3}])
def test_macs_equal_torch_flop_counter(kind, knobs):
    """QGN (torch backend: its submanifold convs are im2col matmuls over all k*k taps) and the dense twin: the
    model's count equals what torch counts of the ops that ran, so the dense/QGN ratios are checked too."""
    model = small_model(kind, blocks_per_level=2)
    images = torch.randn(2, 3, 30, 45)  # padded to 32x48
    counted, prediction = counted_macs(model, images, **knobs)
    ours = prediction_macs(model, (2, 3, 30, 45), prediction)
    assert ours == counted > 0
    _, cost = measure_predict(model, images, **knobs)
    assert cost.macs == ours and cost.seconds > 0 and cost.peak_memory_mb > 0


def test_qgn_costs_less_than_its_dense_twin_by_the_nodes_it_skips():
    qgn, dense = small_model("qgn"), small_model("dense")
    images = torch.randn(1, 3, 64, 64)
    _, sparse_cost = measure_predict(qgn, images, max_depth=2, threshold=0.9)
    _, dense_cost = measure_predict(dense, images, max_depth=2, threshold=0.9)
    assert sparse_cost.macs < dense_cost.macs


def test_the_stem_stripes_do_not_change_the_count():
    """Without autograd the encoder runs its stem in stripes with overlapping halos (less memory); the MACs are a
    function of the image size alone, counted on the meta device."""
    model = small_model("qgn")
    model.encoder.stem_tile_rows = 4  # 256 rows = 64 stride-4 rows: 16 stripes
    images = torch.randn(1, 3, 256, 64)
    striped, _ = counted_macs(model, images, max_depth=0)
    whole = dense_conv_macs(model, (1, 3, 256, 64))
    assert striped > whole  # the halos are computed twice...
    _, cost = measure_predict(model, images, max_depth=0)
    assert cost.macs == whole  # ...but not counted


def test_peak_memory_counts_live_tensors_on_cpu():
    with peak_memory("cpu") as memory:
        a = torch.ones(1 << 18)  # 1 MiB
        b = torch.ones(1 << 18)
        del a, b
        c = torch.ones(1 << 18)
    assert memory["peak_mb"] == pytest.approx(2.0) and c.numel() == 1 << 18


def test_host_syncs_are_the_ops_whose_size_or_value_the_host_needs():
    from qgn.cost import HostSyncs

    x = torch.arange(10)
    with HostSyncs() as syncs:
        x[x > 3]  # a boolean mask: the output size
        torch.nonzero(x)
        x.repeat_interleave(torch.full((10,), 2))  # repeats as a tensor, no output_size
        x.sum().item()
    assert syncs.names == ["index", "nonzero", "repeat_interleave", "_local_scalar_dense"]
    with HostSyncs() as none:
        x[torch.tensor([1, 2])]
        x.repeat_interleave(2)
        x.repeat_interleave(torch.full((10,), 2), output_size=20)
        x * 2
    assert none.names == []
