"""Confident learning (Northcutt et al., 2021): likely label errors from out-of-sample
predicted probabilities.

:func:`find_label_issues` uses cleanlab's ``find_label_issues`` when it is installed (the
``inspect`` extra) and :func:`plain_label_issues` otherwise. The plain version is the same
method with cleanlab's default options (``filter_by="prune_by_noise_rate"``, calibrated
confident joint, ranked by self-confidence), written out here so that the feature works
without the optional dependency; a test checks that both return the same indices.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "confident_joint",
    "confident_thresholds",
    "find_label_issues",
    "plain_label_issues",
]

_EPS = 1e-6  # cleanlab's tolerance for "p >= threshold" and for "prediction == given label"


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(
            f"probs must be (N, K) and labels (N,), got {probs.shape} and {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}")
    return labels, probs


def confident_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per class k: the mean predicted p(k) of the examples labelled k (2.0 for absent classes,
    a threshold no probability reaches)."""
    labels, probs = _check(labels, probs)
    out = np.full(probs.shape[1], 2.0)
    for k in np.unique(labels):
        out[k] = probs[labels == k, k].mean()
    return out


def confident_joint(labels: np.ndarray, probs: np.ndarray, *, calibrate: bool = True) -> np.ndarray:
    """(K, K) counts of (given label, confidently guessed true label).

    An example counts towards the class whose probability reaches that class's threshold
    (the most probable one when several do); examples reaching none are not counted. Every
    diagonal entry is at least 1. Calibrated, the rows sum to the class counts and the whole
    matrix to N.
    """
    labels, probs = _check(labels, probs)
    k = probs.shape[1]
    confident = probs >= confident_thresholds(labels, probs) - _EPS
    n_confident = confident.sum(axis=1)
    guess = np.where(n_confident > 1, probs.argmax(axis=1), confident.argmax(axis=1))
    use = n_confident > 0
    # filled as (guess, given) and transposed, the memory layout cleanlab's sklearn confusion
    # matrix has: the float sums of the calibration then agree with cleanlab's to the last bit
    cj_t = np.zeros((k, k), dtype=np.int64)
    np.add.at(cj_t, (guess[use], labels[use]), 1)
    cj = cj_t.T
    np.fill_diagonal(cj, np.maximum(cj.diagonal(), 1))
    if not calibrate:
        return cj
    counts = np.bincount(labels, minlength=k)
    calibrated = (cj.T / cj.sum(axis=1) * counts).T
    calibrated = calibrated / max(np.sum(calibrated), 1e-100) * counts.sum()
    return np.stack([_round_preserving_sum(row) for row in calibrated])


def _round_preserving_sum(values: np.ndarray) -> np.ndarray:
    """Round to integers whose sum is the rounded sum: the largest remainders go up first."""
    ints = values.round()
    target = round(float(values.sum()))
    while (diff := target - int(ints.sum())) != 0:
        step = 1 if diff > 0 else -1
        order = np.argsort(values - ints)[::-step][: min(abs(diff), len(values))]
        ints[order] += step
    return ints.astype(np.int64)


def _prune_counts(cj: np.ndarray, min_per_class: int) -> np.ndarray:
    """How many examples of given label k to flag as truly j: ``out[k, j]``.

    Diagonal entries are raised to ``min_per_class`` by taking the difference evenly from that
    row's non-zero off-diagonal entries; the counts are then truncated to integers (as cleanlab
    does with its default ``frac_noise=1``).
    """
    diag = cj.diagonal()
    new_diag = np.maximum(diag, min_per_class)
    nonzero_off = np.maximum(np.count_nonzero(cj, axis=1) - 1.0, 1.0)
    out = cj - ((new_diag - diag) / nonzero_off)[:, None]
    out[out < 0] = 0
    np.fill_diagonal(out, new_diag)
    return out.astype(np.int64)


def plain_label_issues(
    labels: np.ndarray, probs: np.ndarray, *, min_examples_per_class: int = 1
) -> np.ndarray:
    """Indices of likely label errors, most suspicious (lowest p(given label)) first.

    Confident learning with pruning by noise rate: for every off-diagonal cell (k, j) of the
    calibrated confident joint, flag that many examples labelled k with the largest margin
    p(j) - p(k); keep only those whose most probable class is not their given label.
    """
    labels, probs = _check(labels, probs)
    n, k = probs.shape
    prune = _prune_counts(confident_joint(labels, probs), min_examples_per_class)
    flagged = np.zeros(n, dtype=bool)
    for given in range(k):
        members = np.flatnonzero(labels == given)
        if len(members) <= min_examples_per_class:
            continue
        for true in range(k):
            count = prune[given, true]
            if true == given or count <= 0:
                continue
            margin = probs[members, true] - probs[members, given]
            flagged[members[np.argsort(-margin)[:count]]] = True
    boosted = probs.copy()
    boosted[np.arange(n), labels] += _EPS
    flagged &= boosted.argmax(axis=1) != labels
    idx = np.flatnonzero(flagged)
    self_confidence = probs[idx, labels[idx]]
    return idx[np.argsort(self_confidence)]


def find_label_issues(
    labels: np.ndarray, probs: np.ndarray, *, use_cleanlab: bool | None = None
) -> np.ndarray:
    """Indices of likely label errors, most suspicious first.

    ``use_cleanlab``: None = cleanlab when installed, else :func:`plain_label_issues`.
    """
    labels, probs = _check(labels, probs)
    if use_cleanlab is not False:
        try:
            from cleanlab.filter import find_label_issues as cleanlab_find
        except ImportError:
            if use_cleanlab:
                raise
        else:
            return np.asarray(
                cleanlab_find(
                    labels,
                    probs,
                    filter_by="prune_by_noise_rate",
                    return_indices_ranked_by="self_confidence",
                    n_jobs=1,
                ),
                dtype=np.int64,
            )
    return plain_label_issues(labels, probs)
