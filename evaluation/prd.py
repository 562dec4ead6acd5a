"""Precision and recall for distributions, PRD (Sajjadi et al. 2018, "Assessing Generative Models via
Precision and Recall").

The union of the two (equal-size) feature samples is clustered with k-means; each sample becomes a
histogram over the clusters, P (evaluated) and Q (reference). For a slope lambda = tan(angle),
    precision alpha(lambda) = sum_w min(lambda Q(w), P(w)),    recall beta(lambda) = alpha(lambda) / lambda
traces the PRD curve (their Theorem 2). Curves of `num_runs` clusterings are averaged, and summarised
as max F_beta (recall-weighted, beta = 8) and max F_(1/beta) (precision-weighted).
"""

from pathlib import Path

import numpy as np

import safeio

ANGLE_EPS = 1e-10  # the curve's end angles are eps and pi/2 - eps, where tan is finite
F_EPS = 1e-10  # keeps F_beta finite where precision = recall = 0
NUM_SEEDINGS = 10  # k-means++ seedings per clustering, the one of least inertia is refined


def _squared_distances(points: np.ndarray, sq_norms: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """|x - c|^2 = |x|^2 - 2 x.c + |c|^2 for all pairs, [N, k]."""
    d = sq_norms[:, None] - 2 * points @ centers.T + (centers**2).sum(axis=1)[None, :]
    return np.maximum(d, 0)


def _kmeans_plus_plus(
    points: np.ndarray, sq_norms: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Arthur & Vassilvitskii 2007: each next center drawn with probability proportional to D(x)^2."""
    centers = [points[rng.integers(len(points))]]
    nearest = _squared_distances(points, sq_norms, centers[0][None])[:, 0]
    for _ in range(1, k):
        total = nearest.sum()
        # all points already sit on centers (duplicates): any point is as good as another
        index = rng.choice(len(points), p=nearest / total) if total > 0 else rng.integers(len(points))
        centers.append(points[index])
        nearest = np.minimum(nearest, _squared_distances(points, sq_norms, points[index][None])[:, 0])
    return np.stack(centers)


def kmeans(points: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 300) -> np.ndarray:
    """Cluster labels [N] of points [N, d]: the best of NUM_SEEDINGS k-means++ seedings, then Lloyd's
    iterations until no label changes (an empty cluster keeps its center)."""
    if len(points) < k:
        raise ValueError(f"k-means with {k} clusters needs at least {k} points, got {len(points)}")
    points = np.asarray(points, np.float64)
    sq_norms = (points**2).sum(axis=1)
    seedings = [_kmeans_plus_plus(points, sq_norms, k, rng) for _ in range(NUM_SEEDINGS)]
    centers = min(seedings, key=lambda c: _squared_distances(points, sq_norms, c).min(axis=1).sum())
    labels = _squared_distances(points, sq_norms, centers).argmin(axis=1)
    for _ in range(max_iter):
        one_hot = np.eye(k)[labels]  # [N, k]
        sizes = one_hot.sum(axis=0)
        filled = sizes > 0
        centers[filled] = (one_hot.T @ points)[filled] / sizes[filled, None]
        new_labels = _squared_distances(points, sq_norms, centers).argmin(axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return labels


def prd_curve(
    eval_dist: np.ndarray, ref_dist: np.ndarray, num_angles: int = 1001
) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) [num_angles] of histogram P = eval_dist against Q = ref_dist."""
    if num_angles < 3:
        raise ValueError(f"the PRD curve needs at least 3 angles, got {num_angles}")
    slopes = np.tan(np.linspace(ANGLE_EPS, np.pi / 2 - ANGLE_EPS, num_angles))
    precision = np.minimum(ref_dist[None, :] * slopes[:, None], eval_dist[None, :]).sum(axis=1)
    recall = precision / slopes
    return precision, recall


def compute_prd(
    eval_feats: np.ndarray,
    ref_feats: np.ndarray,
    num_clusters: int = 20,
    num_angles: int = 1001,
    num_runs: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """PRD curve (precision, recall) [num_angles] of eval_feats [N, d] against ref_feats [N, d].

    Equal sample counts are required: k-means on an unbalanced union favours the larger sample.
    The clusterings draw from one generator seeded with `seed`, so a call repeats exactly.
    """
    eval_feats, ref_feats = np.asarray(eval_feats, np.float64), np.asarray(ref_feats, np.float64)
    if eval_feats.ndim != 2 or eval_feats.shape[1:] != ref_feats.shape[1:] or ref_feats.ndim != 2:
        raise ValueError(
            f"features must be [N, d] for both sets; got {eval_feats.shape} and {ref_feats.shape}"
        )
    if len(eval_feats) != len(ref_feats):
        raise ValueError(
            f"PRD needs equal sample counts, got {len(eval_feats)} evaluated and {len(ref_feats)} reference; "
            "subsample the larger set (evaluation.prd.equal_size)"
        )
    rng = np.random.default_rng(seed)
    union = np.concatenate([eval_feats, ref_feats])
    n = len(eval_feats)
    curves = []
    for _ in range(num_runs):
        labels = kmeans(union, num_clusters, rng)
        eval_dist = np.bincount(labels[:n], minlength=num_clusters) / n
        ref_dist = np.bincount(labels[n:], minlength=num_clusters) / n
        curves.append(prd_curve(eval_dist, ref_dist, num_angles))
    precision, recall = np.mean(curves, axis=0)
    # alpha <= sum P = 1 and beta <= sum Q = 1; rounding can overshoot by an ulp
    return np.clip(precision, 0, 1), np.clip(recall, 0, 1)


def equal_size(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Both samples cut to the smaller count; the larger one by a seeded draw without replacement."""
    n = min(len(a), len(b))
    rng = np.random.default_rng(seed)

    def cut(x: np.ndarray) -> np.ndarray:
        return x if len(x) == n else x[np.sort(rng.choice(len(x), n, replace=False))]

    return cut(a), cut(b)


def f_beta(precision: np.ndarray, recall: np.ndarray, beta: float = 8) -> tuple[float, float]:
    """(max F_beta, max F_(1/beta)) over the curve, F_b = (1 + b^2) P R / (b^2 P + R).

    With beta = 8, F_8 weighs recall (coverage of the reference) and F_1/8 precision (quality).
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    precision, recall = np.asarray(precision, np.float64), np.asarray(recall, np.float64)

    def score(b: float) -> float:
        return float(np.max((1 + b**2) * precision * recall / (b**2 * precision + recall + F_EPS)))

    return score(beta), score(1 / beta)


def plot_prd(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *, replace: bool = False
) -> None:
    """Precision against recall, one line per labelled curve, written to `path` (needs matplotlib) by
    `safeio.write_atomically` (over an existing file only when `replace`), in the format its suffix
    names."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "the PRD plot needs matplotlib: pip install matplotlib (the project's [plot] extra)"
        ) from error
    figure = Figure(figsize=(4, 4))
    axes = figure.add_subplot()
    for label, (precision, recall) in curves.items():
        axes.plot(recall, precision, label=label, linewidth=2, alpha=0.7)
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="Recall", ylabel="Precision")
    axes.legend(loc="lower left")
    figure.tight_layout()
    kind = Path(path).suffix.lstrip(".") or "png"
    safeio.write_atomically(path, lambda file: figure.savefig(file, dpi=150, format=kind), replace=replace)
