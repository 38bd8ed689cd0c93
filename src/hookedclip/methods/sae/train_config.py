"""The training recipe as one frozen dataclass: the published recipe by default, a faster mode."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
REFERENCE_BATCH = 32
FAST_BATCH = 1024
FAST_LR = 1e-3

# Fields that change no weight: a run resumed with other values of these continues exactly.
_NOT_COMPARED_ON_RESUME = ("progress", "checkpoint_every", "log_every")


@dataclass(frozen=True)
class TrainConfig:
    """How to train a :class:`~hookedclip.methods.sae.TopKSAE`.

    The defaults are the published recipe: ``d_sae = 30000`` latents, ``k = 64``, the raw top-k
    rule; AdamW (``lr 2e-4``, ``eps 1e-7``, weight decay 0.01); the learning rate multiplied by
    ``gamma = 0.1`` at 80% and 93.3% of the steps (epochs 24 and 28 of 30 there); gradients clipped
    to norm 1.0; batches of 32 images (32 class tokens, or 32·(T−1) patch tokens with
    ``token="spatial"``); 120,000 steps (about 3.8M class tokens).

    :meth:`fast` departs from that recipe for speed: batches of 1,024 with a learning rate of
    1e-3 (about the square-root scaling of 2e-4 with the batch), over as many vectors in 32 times
    fewer steps; it reaches a similar loss on the toy model, not an identical autoencoder.

    ``layer``: the block after which the autoencoder reads (``None``: take it from the target's
    name); ``precision``: ``"auto"`` is bf16 autocast (fp16 with a gradient scaler where bf16 is
    unsupported) on a GPU and float32 on the CPU, where autocast is never used; ``dead_window``:
    a latent counts as dead when it did not fire in this many training vectors; ``log_every`` /
    ``checkpoint_every``: steps between log lines / checkpoints (0: only at the end).
    """

    d_sae: int = 30000
    k: int = 64
    activation: str = "topk"
    layer: int | None = None
    token: str = "cls"
    steps: int = 120_000
    batch_size: int = REFERENCE_BATCH
    lr: float = 2e-4
    eps: float = 1e-7
    weight_decay: float = 0.01
    milestones: tuple[float, ...] = (0.8, 28 / 30)
    gamma: float = 0.1
    clip_norm: float = 1.0
    seed: int = 0
    precision: str = "auto"
    dead_window: int = 10_000
    log_every: int = 100
    checkpoint_every: int = 1000
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.k <= self.d_sae:
            raise ValueError(
                f"k = {self.k} active latents is impossible with d_sae = {self.d_sae} latents: choose 1 <= k <= d_sae"
            )
        if self.token not in ("cls", "spatial"):
            raise ValueError(f"token must be 'cls' or 'spatial', got {self.token!r}")
        if self.activation not in ("topk", "topk_relu"):
            raise ValueError(f"activation must be 'topk' or 'topk_relu', got {self.activation!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("steps", "batch_size", "dead_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        if not all(0 < m <= 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of the steps in (0, 1], got {self.milestones}")

    @classmethod
    def fast(cls, **changes) -> TrainConfig:
        """The faster mode (class docstring): batch 1,024, lr 1e-3, steps scaled so that as many
        vectors are seen as the given (or default) number of steps at batch 32 would see."""
        steps = changes.pop("steps", cls.steps)
        batch = changes.pop("batch_size", FAST_BATCH)
        base = {"batch_size": batch, "lr": FAST_LR, "steps": max(1, steps * REFERENCE_BATCH // batch)}
        return cls(**{**base, **changes})

    def milestone_steps(self) -> list[int]:
        """The steps after which the learning rate is multiplied by ``gamma``."""
        return [max(1, round(m * self.steps)) for m in self.milestones]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["milestones"] = list(self.milestones)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return cls(**{**data, "milestones": tuple(data.get("milestones", cls.milestones))})

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields (other than logging and progress) whose values differ, as ``name: a -> b``."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in _NOT_COMPARED_ON_RESUME and a[k] != b[k]]

    def with_(self, **changes) -> TrainConfig:
        return replace(self, **changes)
