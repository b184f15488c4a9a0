"""load_predictor / Predictor: raw images as users have them, with the normalisation the checkpoint trained with."""

import numpy as np
import pytest
import torch

from qgn import QGNConfig, load_predictor
from qgn.normalize import normalize_image
from training.config import RunConfig, TrainConfig
from training.datasets import DataConfig
from training.trainer import train
from training.transforms import AugmentConfig


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(RunConfig(model=QGNConfig.for_depth(3, num_classes=6),
                    data=DataConfig(dataset="synthetic:4,size=32", augment=AugmentConfig(crop=(32, 32))),
                    train=TrainConfig(epochs=1, batch_size=2, progress=False, test=False)), out)
    return out / "last.pt"


def test_raw_images_get_the_checkpoints_normalisation(checkpoint):
    predictor = load_predictor(checkpoint)
    assert predictor.normalize.mode == "fixed" and predictor.normalize.mean is not None  # "auto", resolved
    image = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)  # (H, W, C) as read
    prediction = predictor.predict(image)
    expected = predictor.model.predict(torch.from_numpy(normalize_image(image.transpose(2, 0, 1),
                                                                        predictor.normalize))[None])
    assert prediction.labels.shape == (1, 37, 50) and torch.equal(prediction.labels, expected.labels)
    # the same image as a torch tensor (channels first), as floats on a 0..1 scale, and in a batch
    as_tensor = predictor.predict(torch.from_numpy(image).permute(2, 0, 1))
    as_float = predictor.predict(image.astype(np.float32) / 255)
    batch = predictor.predict(np.stack([image, image]))
    assert torch.equal(as_tensor.labels, expected.labels)
    assert (as_float.labels == expected.labels).float().mean() > 0.99  # float rounding of x / 255 only
    assert batch.labels.shape == (2, 37, 50) and torch.equal(batch.labels[1], expected.labels[0])
    several = predictor.predict([image, image[:20, :30]])
    assert [p.labels.shape for p in several] == [(1, 37, 50), (1, 20, 30)]
    measured, cost = predictor.measure(image)
    assert torch.equal(measured.labels, expected.labels) and cost.macs > 0 and cost.seconds > 0


def test_gray_and_16_bit_images(checkpoint):
    predictor = load_predictor(checkpoint)
    gray16 = np.random.default_rng(1).integers(0, 65536, (24, 24), dtype=np.uint16)
    assert predictor.predict(gray16).labels.shape == (1, 24, 24)  # replicated to the model's 3 channels
    assert predictor.predict(gray16[:, :, None]).labels.shape == (1, 24, 24)


def test_inputs_that_would_be_silently_wrong_are_refused(checkpoint):
    predictor = load_predictor(checkpoint)
    raw_floats = np.random.default_rng(2).uniform(0, 255, (16, 16, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="0..1 scale"):
        predictor.predict(raw_floats)
    with pytest.raises(ValueError, match="in_channels=3"):
        predictor.predict(np.zeros((16, 16, 2), np.uint8))
    with pytest.raises(ValueError, match="channels-last"):
        predictor.predict(np.zeros((3, 16, 16), np.uint8))  # a channels-first numpy array
    with pytest.raises(ValueError, match="integer or float"):
        predictor.predict(np.zeros((16, 16), bool))
    with pytest.raises(ValueError, match="numpy arrays or torch tensors"):
        predictor.predict("image.png")
    with pytest.raises(ValueError, match="use 'bf16' on CPU"):
        load_predictor(checkpoint, amp="fp16")
    assert load_predictor(checkpoint, amp="bf16").predict(np.zeros((16, 16, 3), np.uint8)).labels.shape == (1, 16, 16)
