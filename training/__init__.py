"""Training: data sets, augmentation, quadtree collation, the loss, the trainer and the demo. What uses a trained
network (evaluation, metrics, pictures) lives in qgn/; the command line in qgn_cli/."""

import quadtree  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
