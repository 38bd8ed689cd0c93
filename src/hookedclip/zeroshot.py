"""Zero-shot classification: the open_clip recipe, plus per-group and worst-group accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


class ZeroShotClassifier:
    """Unit class embeddings ``W_cls [d_out, n_classes]`` built from class names and templates.

    Each class embedding is the mean of its L2-normalised template embeddings, normalised
    again (open_clip's ``build_zero_shot_classifier``). Logits are ``normalize(e) @ W_cls``.
    """

    def __init__(self, weights: Float[Tensor, "d_out n_classes"], classnames: Sequence[str]) -> None:
        if weights.shape[1] != len(classnames):
            raise ValueError(f"{weights.shape[1]} class columns but {len(classnames)} class names")
        self.weights = weights
        self.classnames = list(classnames)

    @classmethod
    @torch.no_grad()
    def from_classnames(
        cls,
        model,
        classnames: Sequence[str],
        templates: Sequence[str] | Sequence[callable] = ("a photo of a {}.",),
        batch_size: int = 256,
    ) -> ZeroShotClassifier:
        """Templates are format strings with one ``{}`` (or callables ``name -> text``)."""
        columns = []
        for name in classnames:
            texts = [t(name) if callable(t) else t.format(name) for t in templates]
            columns.append(F.normalize(embed_texts(model, texts, batch_size).mean(0), dim=-1))
        return cls(torch.stack(columns, dim=1), classnames)

    @classmethod
    @torch.no_grad()
    def from_prompts(cls, model, prompts: dict[str, Sequence[str]]) -> ZeroShotClassifier:
        """Each class given by its own list of full prompts: ``{"circle": ["a circle.", ...]}``."""
        columns = [F.normalize(embed_texts(model, list(p)).mean(0), dim=-1) for p in prompts.values()]
        return cls(torch.stack(columns, dim=1), list(prompts))

    def logits(self, embeddings: Float[Tensor, "batch d_out"]) -> Float[Tensor, "batch n_classes"]:
        return F.normalize(embeddings, dim=-1) @ self.weights.to(embeddings)

    def predict(self, embeddings: Float[Tensor, "batch d_out"]) -> Int[Tensor, " batch"]:
        return self.logits(embeddings).argmax(-1)


@torch.no_grad()
def embed_texts(model, texts: Sequence[str], batch_size: int = 256) -> Float[Tensor, "n d_out"]:
    """L2-normalised text embeddings of ``texts``, tokenized and encoded in batches."""
    if len(texts) == 0:
        raise ValueError("no texts to embed")
    return torch.cat(
        [
            model.encode_text(model.tokenize(list(texts[i : i + batch_size])), normalize=True)
            for i in range(0, len(texts), batch_size)
        ]
    )


@torch.no_grad()
def embed_images(model, batches) -> Float[Tensor, "n d_out"]:
    """Image embeddings of every batch (image tensors or ``(images, labels[, groups])`` tuples;
    see :mod:`hookedclip.data.batches`), concatenated."""
    from hookedclip.data.batches import iter_images

    return torch.cat([model.encode_image(images) for images in iter_images(batches, model)])


def accuracy(predictions: Int[Tensor, " n"], labels: Int[Tensor, " n"]) -> float:
    """Top-1 accuracy in [0, 1]."""
    labels = torch.as_tensor(labels, device=predictions.device)
    return float((predictions == labels).float().mean())


def accuracy_interval(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for an accuracy of ``correct`` out of ``n`` (scipy's), in [0, 1]."""
    from scipy.stats import binomtest

    if n <= 0:
        raise ValueError("an accuracy interval needs at least one example")
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_text(value: float, n: int, digits: int = 1) -> str:
    """``value`` (a fraction measured on ``n`` items) as a percentage with its 95% Wilson
    interval, e.g. ``"84.5% [82.9, 86.0]"``."""
    low, high = accuracy_interval(round(value * n), n)
    return f"{100 * value:.{digits}f}% [{100 * low:.{digits}f}, {100 * high:.{digits}f}]"


def mean_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """The mean of per-item ``values`` with its normal-approximation interval, ``mean ± z·SE``
    (``z = 1.96`` at 95%, ``SE = sample std / sqrt(n)``): ``(mean, low, high)``.

    For metrics that are means over images (a per-image IoU, a paired difference in correctness);
    a single value has a zero-width interval."""
    from scipy.stats import norm

    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    if x.numel() == 0:
        raise ValueError("a mean interval needs at least one value")
    mean = float(x.mean())
    se = float(x.std(unbiased=True)) / x.numel() ** 0.5 if x.numel() > 1 else 0.0
    half = float(norm.ppf(0.5 + level / 2)) * se
    return mean, mean - half, mean + half


def mean_text(values, digits: int = 1, percent: bool = True, signed: bool = False) -> str:
    """The mean of ``values`` with its 95% interval (:func:`mean_interval`), e.g. ``"57.3 [55.1, 59.5]"``
    (values in [0, 1] are shown as percentages unless ``percent=False``; ``signed`` adds a ``+``)."""
    mean, low, high = (100 * v if percent else v for v in mean_interval(values))
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def group_accuracies(
    predictions: Int[Tensor, " n"], labels: Int[Tensor, " n"], groups: Int[Tensor, " n"]
) -> dict[int, float]:
    """Accuracy within each group id present in ``groups``."""
    labels = torch.as_tensor(labels, device=predictions.device)
    groups = torch.as_tensor(groups, device=predictions.device)
    return {int(g): accuracy(predictions[groups == g], labels[groups == g]) for g in torch.unique(groups)}


def worst_group_accuracy(predictions: Int[Tensor, " n"], labels: Int[Tensor, " n"], groups: Int[Tensor, " n"]) -> float:
    """The minimum over groups of the within-group accuracy (Waterbirds' WGA)."""
    return min(group_accuracies(predictions, labels, groups).values())


def imagenet_classifier(model, templates: str = "openai") -> ZeroShotClassifier:
    """The 1000 ImageNet classes with open_clip's class names and templates
    (``"openai"``: the 80 OpenAI templates, ``"simple"``: open_clip's short set)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    sets = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}
    if templates not in sets:
        raise ValueError(f"unknown template set {templates!r}; choose one of {sorted(sets)}")
    chosen = sets[templates]
    return ZeroShotClassifier.from_classnames(model, IMAGENET_CLASSNAMES, chosen)
