"""Training: data sets, augmentation, quadtree collation and metrics (trainer, loss and CLI live beside them)."""

import quadtree  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
