"""Training: data sets, augmentation, quadtree collation and metrics (trainer, loss and CLI live beside them)."""
