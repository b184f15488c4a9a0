"""The QGN network: dense encoder, dense root head, sparse decoder that grows a quadtree; and its dense twin."""

import quadtree  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

from qgn.config import QGNConfig
from qgn.cost import Cost, measure_predict
from qgn.model import QGN, Decoding, DenseTwin
from qgn.registry import build_model
from qgn.precision import AMP_DTYPES, autocast, fp32_math
from qgn.predict import Prediction, predict
from qgn.predictor import Predictor, load_predictor

__all__ = ["AMP_DTYPES", "Cost", "Decoding", "DenseTwin", "Prediction", "Predictor", "QGN", "QGNConfig",
           "autocast", "build_model", "fp32_math", "load_predictor", "measure_predict", "predict"]
