"""Linear probes: how well a linear classifier reads a label off activations."""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int
from torch import Tensor


def probe_accuracy(
    features: Float[Tensor, "n d"] | np.ndarray,
    labels: Int[Tensor, " n"] | np.ndarray,
    test_fraction: float = 0.5,
    seed: int = 0,
) -> float:
    """Held-out accuracy of a multinomial logistic-regression probe on standardised features
    (stratified split)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features.detach().cpu().double() if isinstance(features, Tensor) else features, dtype=np.float64)
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    if len(np.unique(y)) < 2:
        raise ValueError("a probe needs at least two classes in the labels")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(x_tr, y_tr)
    return float(clf.score(x_te, y_te))


def head_probe_grid(
    head_outputs: Float[Tensor, "component n d"],
    labels: Int[Tensor, " n"] | np.ndarray,
    n_layers: int,
    n_heads: int,
    seed: int = 0,
    progress: bool = False,
    desc: str = "head probes",
) -> np.ndarray:
    """Probe accuracy of every head's output, as ``[n_layers, n_heads]`` (rows of
    ``head_outputs`` ordered ``L0H0, L0H1, ...`` as ``ActivationCache.stack_head_results``).
    ``progress``: a progress bar over the heads (one probe fit each)."""
    from tqdm.auto import tqdm

    if len(head_outputs) != n_layers * n_heads:
        raise ValueError(
            f"head_outputs has {len(head_outputs)} rows; expected n_layers * n_heads = "
            f"{n_layers} * {n_heads} = {n_layers * n_heads}"
        )
    heads = tqdm(head_outputs, desc=desc, disable=not progress, leave=False)
    scores = [probe_accuracy(h, labels, seed=seed) for h in heads]
    return np.asarray(scores).reshape(n_layers, n_heads)
