"""The QGN network: dense encoder, dense root head, sparse quadtree decoder; and its dense twin."""

from qgn.config import QGNConfig
from qgn.model import QGN, LevelOutput, QGNOutput

__all__ = ["QGN", "LevelOutput", "QGNConfig", "QGNOutput"]
