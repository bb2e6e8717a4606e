"""An attention layer's sampling points and the detections, as read from one dump."""
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ['AttentionFields', 'Detections']


@dataclass
class AttentionFields:
    """One attention module in one dump (:mod:`deform_viz.attention.format`), arrays in float32.

    ``queries`` (n,), ``reference`` (n, 2 | 4), ``offsets`` (n, M, L, P, 2), ``weights`` (n, M, L, P);
    coordinates (x, y) in original-image pixels.
    """
    name: str
    info: dict
    queries: np.ndarray
    reference: np.ndarray
    offsets: np.ndarray
    weights: np.ndarray

    @property
    def role(self) -> str:
        return self.info['role']

    @property
    def reference_point(self) -> np.ndarray:
        """(n, 2) the reference point (x, y) (the box centre for 4-d references)."""
        return self.reference[:, :2]

    @property
    def locations(self) -> np.ndarray:
        """(n, M, L, P, 2) sampling locations (x, y) in original-image pixels."""
        return self.reference_point[:, None, None, None, :] + self.offsets

    def rows_of(self, queries) -> np.ndarray:
        """Row of each of ``queries`` (query indices) in the stored arrays; -1 where not stored."""
        order = {int(q): i for i, q in enumerate(self.queries)}
        return np.array([order.get(int(q), -1) for q in np.atleast_1d(queries)], dtype=np.int64)

    def encoder_cells(self) -> np.ndarray:
        """(n, 3) level, row, column of each stored encoder query (its feature-map cell)."""
        if self.role != 'encoder':
            raise ValueError(f'{self.name} is a decoder layer: its queries are not cells')
        sizes = np.array([h * w for h, w in self.info['spatial_shapes']])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        level = np.searchsorted(starts, self.queries, side='right') - 1
        within = self.queries - starts[level]
        widths = np.array([w for _, w in self.info['spatial_shapes']])[level]
        return np.stack([level, within // widths, within % widths], -1)


@dataclass
class Detections:
    """The detections of one dump: boxes x1, y1, x2, y2 in original-image pixels, scores, labels and
    the decoder query that produced each (-1 if unknown; ``linked`` when all are known)."""
    bboxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    queries: np.ndarray
    linked: bool

    def __len__(self) -> int:
        return len(self.scores)

    def top(self, count: Optional[int] = None) -> np.ndarray:
        """Indices of the ``count`` best-scoring detections, best first."""
        order = np.argsort(-self.scores, kind='stable')
        return order if count is None else order[:count]
