"""SITH on one layer: every head's singular vectors, mapped into the joint space and explained.

:func:`decompose` runs :func:`~hookedclip.methods.sith.head_svd`,
:func:`~hookedclip.methods.sith.to_joint` and a pursuit over a :class:`Dictionary` and returns a
:class:`SithResult`. Every argument is checked before any work: the architecture, the layer, the
method, the sides, the dictionary (its model and width) and ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from hookedclip.identity import model_identity
from hookedclip.methods.sith.dictionary import Dictionary, joint_width
from hookedclip.methods.sith.joint import image_mean as mean_of_images
from hookedclip.methods.sith.joint import to_joint
from hookedclip.methods.sith.pursuit import MAX_MEMORY, Pursuit, comp, lasso, matching_pursuit, nnomp, top_k
from hookedclip.methods.sith.result import SIDES, SithResult
from hookedclip.methods.sith.svd import check_layer, head_svd

#: The pursuit each method name runs (``lam`` is COMP's coherence weight and lasso's l1 penalty).
METHODS: dict[str, Callable[..., Pursuit]] = {
    "comp": lambda x, D, k, lam, mem: comp(x, D, k=k, lam=lam, max_memory=mem),
    "nnomp": lambda x, D, k, lam, mem: nnomp(x, D, k=k, max_memory=mem),
    "mp": lambda x, D, k, lam, mem: matching_pursuit(x, D, k=k, max_memory=mem),
    "top_k": lambda x, D, k, lam, mem: top_k(x, D, k=k, max_memory=mem),
    "lasso": lambda x, D, k, lam, mem: lasso(x, D, k=k, l1_penalty=lam),
}


def check_architecture(model) -> None:
    """Refuse, naming the option, a model SITH cannot read: one without an image projection into
    a joint space, or a LLaVA vision tower (its features are read inside the tower). LayerScale
    needs no check: it is folded into ``W_O`` when a model is loaded."""
    joint_width(model)
    if "llava_vision_feature_layer" in model.cfg.extra:
        raise NotImplementedError(
            "this is a LLaVA vision tower (llava_vision_feature_layer): its features are read inside the "
            "tower, not through a joint image-text space, so SITH's concept explanations do not apply"
        )


def check_arguments(model, layer: int, dictionary, k: int, method: str, sides: Sequence[str], lam: float) -> int:
    """The checks :func:`decompose` makes before any work; returns the layer as a block index."""
    check_architecture(model)
    layer = check_layer(model, layer)
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if isinstance(sides, str) or not sides or any(s not in SIDES for s in sides) or len(set(sides)) != len(sides):
        raise ValueError(f"sides must be a non-empty list of distinct sides from {SIDES}, got {sides!r}")
    if not isinstance(dictionary, Dictionary):
        raise ValueError(
            f"dictionary must be a sith.Dictionary, got {type(dictionary).__name__}: build one with "
            "sith.dictionary(model, 'concepts.txt' | 'toy' | [concepts] | tensor)"
        )
    dictionary.check_for(model)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(dictionary):
        raise ValueError(f"k must be an integer in 1..{len(dictionary)} (the dictionary's size), got {k!r}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    return layer


@torch.no_grad()
def decompose(
    model,
    layer: int,
    dictionary: Dictionary,
    k: int = 5,
    lam: float = 0.3,
    method: str = "comp",
    sides: Sequence[str] = ("right", "left"),
    rank: int | None = None,
    image_mean: Float[Tensor, " d_out"] | None = None,
    batches=None,
    fold_ln: bool = True,
    center: bool = True,
    max_memory: int = MAX_MEMORY,
) -> SithResult:
    """Explain every singular vector of every head of image-tower block ``layer``.

    Args:
        model: a :class:`~hookedclip.HookedCLIP` (never modified).
        layer: the block (negative counts from the end).
        dictionary: a :class:`Dictionary` embedded by this model (:func:`~hookedclip.methods.sith.dictionary`).
        k: concepts per vector.
        lam: COMP's coherence weight (lasso: its l1 penalty; other methods ignore it).
        method: ``"comp"``, ``"nnomp"``, ``"mp"``, ``"top_k"`` or ``"lasso"``.
        sides: ``"right"`` (write directions) and/or ``"left"`` (read directions).
        rank: vectors per head (the largest; ``None``: all ``d_head``).
        image_mean: ``μ_img [d_out]`` to subtract in the joint space, or ``batches`` of images to
            compute it from (:func:`~hookedclip.methods.sith.image_mean`); neither: none.
        fold_ln, center: as :func:`~hookedclip.methods.sith.head_svd`.
        max_memory: bytes for one chunk of the pursuit's scores.

    Returns:
        :class:`SithResult` with ``indices`` and ``coefficients [side, head, r, k]``.
    """
    layer = check_arguments(model, layer, dictionary, k, method, sides, lam)
    if image_mean is not None and batches is not None:
        raise ValueError("give image_mean or batches (to compute it), not both")
    svd = head_svd(model, layer, rank=rank, fold_ln=fold_ln, center=center)
    if batches is not None:
        image_mean = mean_of_images(model, batches)
    atoms = dictionary.atoms
    parts = [explain(model, svd.vectors(side), atoms, k, lam, method, image_mean, max_memory) for side in sides]
    return SithResult(
        S=svd.S.float(),
        indices=torch.stack([p[0] for p in parts]),
        coefficients=torch.stack([p[1] for p in parts]),
        fidelity=torch.stack([p[2] for p in parts]),
        concepts=list(dictionary.concepts),
        sides=list(sides),
        layer=layer,
        method=method,
        lam=float(lam) if method in ("comp", "lasso") else 0.0,
        fold_ln=fold_ln,
        center=center,
        model=model_identity(model),
    )


def explain(
    model,
    vectors: Float[Tensor, "... d_model"],
    atoms: Float[Tensor, "n_concepts d_out"],
    k: int,
    lam: float,
    method: str,
    image_mean: Tensor | None,
    max_memory: int = MAX_MEMORY,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(indices, coefficients, fidelity)`` of residual-stream ``vectors`` over prepared ``atoms``."""
    targets = to_joint(model, vectors, image_mean=image_mean).float().cpu()
    found = METHODS[method](targets, atoms, k, lam, max_memory)
    return found.indices, found.coefficients.float(), fidelity(found, targets, atoms)


def fidelity(found: Pursuit, targets: Float[Tensor, "... d"], atoms: Float[Tensor, "n d"]) -> Float[Tensor, "..."]:
    """The cosine of each reconstruction ``Σ c_t d_t`` with its target (0 where nothing was kept)."""
    recon = found.reconstruct(atoms.double())
    return F.cosine_similarity(recon, targets.double(), dim=-1, eps=1e-12).float()
