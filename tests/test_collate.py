import pickle

import pytest
import torch

import quadtree
from training.collate import QuadtreeCollate, collate_quadtree
from training.synthetic import SyntheticScenes


def test_collate_returns_images_masks_and_their_tree():
    ds = SyntheticScenes(num_images=3, size=(64, 96), num_classes=5)
    samples = [ds[i] for i in range(3)]
    images, masks, tree = collate_quadtree(depth=4)(samples)
    assert images.shape == (3, 3, 64, 96) and images.dtype == torch.float32
    assert masks.shape == (3, 64, 96) and masks.dtype == torch.int64
    assert torch.equal(images, torch.stack([s[0] for s in samples]))
    assert torch.equal(masks, torch.stack([s[1] for s in samples]))
    assert tree.equal(quadtree.encode(torch.stack([s[1] for s in samples]), 4, 255))
    assert tree.batch_size == 3 and tree.depth == 4
    assert torch.equal(quadtree.decode(tree), masks)


def test_collate_pads_to_the_largest_sample_and_the_root_grid():
    small = (torch.ones(1, 20, 30), torch.full((20, 30), 2, dtype=torch.long))
    large = (torch.ones(1, 40, 33), torch.ones(40, 33, dtype=torch.long))
    images, masks, tree = collate_quadtree(depth=3, ignore_index=250)([small, large])
    assert images.shape == (2, 1, 40, 40)  # max size (40, 33), width rounded up to a multiple of 8
    assert (masks[0, 20:] == 250).all() and (masks[0, :, 30:] == 250).all() and (masks[0, :20, :30] == 2).all()
    assert (images[0, :, 20:] == 0).all() and (images[1, :, :, 33:] == 0).all()
    assert tree.image_size == (40, 40) and tree.ignore_index == 250
    assert tree.equal(quadtree.encode(masks, 3, 250))
    images, masks, _ = collate_quadtree(depth=3, pad_to_multiple=False)([small, large])
    assert images.shape == (2, 1, 40, 33)


def test_collate_in_a_dataloader_and_picklable_for_workers():
    collate = collate_quadtree(depth=3)
    assert pickle.loads(pickle.dumps(collate)) == collate
    ds = SyntheticScenes(num_images=4, size=(32, 48), num_classes=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == 2
    images, masks, tree = batches[1]
    assert isinstance(tree, quadtree.Quadtree) and tree.batch_size == 2
    assert torch.equal(masks[0], ds[2][1])


def test_collate_errors():
    collate = QuadtreeCollate(depth=2)
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    with pytest.raises(ValueError, match="image \\(C, H, W\\) and mask \\(H, W\\) of one size"):
        collate([(torch.zeros(3, 8, 8), torch.zeros(8, 4, dtype=torch.long))])
    with pytest.raises(ValueError, match="different channel counts"):
        collate([(torch.zeros(3, 8, 8), torch.zeros(8, 8, dtype=torch.long)),
                 (torch.zeros(1, 8, 8), torch.zeros(8, 8, dtype=torch.long))])
    with pytest.raises(ValueError, match="pair"):
        collate([torch.zeros(3, 8, 8)])
