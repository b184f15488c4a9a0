"""The QGN network: dense encoder, dense root head, sparse quadtree decoder; and its dense twin."""

import quadtree  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

from qgn.config import QGNConfig
from qgn.model import QGN, LevelOutput, QGNOutput
from qgn.precision import AMP_DTYPES, autocast, fp32_math
from qgn.predictor import Predictor, load_predictor

__all__ = ["AMP_DTYPES", "QGN", "LevelOutput", "Predictor", "QGNConfig", "QGNOutput", "autocast", "fp32_math",
           "load_predictor"]
