"""The training loss, the metrics logged beside it, and the log itself.

Every metric is accumulated on the device between logging steps (no synchronisation per step):

* ``loss``: ``100 · mean((x̂/‖x̂‖ − h/‖h‖)²)``, i.e. ``200·(1 − cos(x̂, h))/D`` per row;
* ``cosine``: the mean ``cos(x̂, h)``;
* ``fvu``: fraction of variance unexplained between ``LN₀(x̂)`` and ``LN₀(h)``, ``LN₀`` a
  LayerNorm without affine (the reconstruction's scale and mean are free under the cosine loss, and
  everything after a LayerNorm ignores them);
* ``dead_fraction``: the fraction of latents that did not fire once in the last ``window``
  training vectors (a true firing count);
* ``negatives``: kept (top-k) values below zero, per vector.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

METRICS = ("loss", "cosine", "fvu", "dead_fraction", "negatives")


def cosine_loss(recons: Float[Tensor, "n d"], h: Float[Tensor, "n d"]) -> Float[Tensor, ""]:
    """``100 · mean_{rows, dims}(x̂/‖x̂‖ − h/‖h‖)²``, computed in float32; invariant to the scale of both."""
    recons, h = recons.float(), h.float()
    return 100 * (F.normalize(recons, dim=-1) - F.normalize(h, dim=-1)).pow(2).mean()


def ln_fvu_terms(recons: Float[Tensor, "n d"], h: Float[Tensor, "n d"]) -> tuple[Tensor, Tensor]:
    """The FVU's numerator ``Σ‖LN₀(h) − LN₀(x̂)‖²`` and denominator ``Σ‖LN₀(h) − mean LN₀(h)‖²`` of a batch."""
    a = F.layer_norm(recons.float(), recons.shape[-1:])
    b = F.layer_norm(h.float(), h.shape[-1:])
    return (b - a).pow(2).sum(), (b - b.mean(0)).pow(2).sum()


class Metrics:
    """Running sums on the device, turned into numbers only when a line is logged."""

    def __init__(self, d_sae: int, window: int, device: torch.device) -> None:
        self.window = window
        self.last_fired = torch.zeros(d_sae, dtype=torch.int64, device=device)  # vector count when last active
        self.seen = 0
        self._zero(device)

    def _zero(self, device) -> None:
        self.sums = torch.zeros(6, dtype=torch.float64, device=device)  # loss·rows, cos, fvu num, den, negatives, rows
        self.steps = 0

    def update(self, loss: Tensor, recons: Tensor, h: Tensor, values: Tensor, indices: Tensor, seen: int) -> None:
        """Add one step (``seen``: global vectors seen after it, for the firing counts)."""
        with torch.no_grad():
            cos = F.cosine_similarity(recons.float(), h.float(), dim=-1).sum()
            num, den = ln_fvu_terms(recons, h)
            negatives = (values < 0).sum()
            step = torch.stack(
                [loss.detach().double() * h.shape[0], cos.double(), num.double(), den.double(), negatives.double()]
            )
            self.sums[:5] += step
            self.sums[5] += h.shape[0]
            self.last_fired.index_fill_(0, indices.reshape(-1), seen)
        self.steps += 1
        self.seen = seen

    def state(self) -> dict:
        return {"last_fired": self.last_fired.cpu(), "seen": self.seen, "sums": self.sums.cpu(), "steps": self.steps}

    def load_state(self, state: dict) -> None:
        self.last_fired.copy_(state["last_fired"])
        self.seen, self.steps = state["seen"], state["steps"]
        self.sums.copy_(state["sums"])  # a line interrupted half-way continues

    def dead_fraction(self) -> float:
        return (self.last_fired <= max(self.seen - self.window, 0)).double().mean().item()

    def line(self, reduce=None) -> dict[str, float]:
        """This interval's means (``reduce`` all-reduces the sums over processes first) and reset."""
        sums = self.sums.clone()
        if reduce is not None:
            reduce(sums, "sum")
            reduce(self.last_fired, "max")  # global vector counts: the latest firing on any process
        loss, cos, num, den, negatives, rows = sums.tolist()
        out = {
            "loss": loss / max(rows, 1),
            "cosine": cos / max(rows, 1),
            "fvu": num / den if den else float("nan"),
            "dead_fraction": self.dead_fraction(),
            "negatives": negatives / max(rows, 1),
        }
        self._zero(self.sums.device)
        return out


@dataclass
class TrainLog:
    """What a training run logged: ``step``, ``samples`` (training vectors seen) and ``lr`` per
    line, and one list per metric (module docstring); plus the config and wall time."""

    config: dict = field(default_factory=dict)
    step: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)
    fvu: list[float] = field(default_factory=list)
    dead_fraction: list[float] = field(default_factory=list)
    negatives: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def append(self, step: int, samples: int, lr: float, metrics: dict[str, float]) -> None:
        self.step.append(step)
        self.samples.append(samples)
        self.lr.append(lr)
        for name in METRICS:
            getattr(self, name).append(metrics[name])

    @property
    def final(self) -> dict[str, float]:
        """The last logged line's metrics (empty before the first)."""
        return {name: getattr(self, name)[-1] for name in METRICS} if self.step else {}

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainLog:
        return cls(**json.loads(Path(path).read_text()))

    def __repr__(self) -> str:
        last = ", ".join(f"{k}={v:.4g}" for k, v in self.final.items())
        return f"TrainLog({len(self.step)} lines, last step {self.step[-1] if self.step else 0}: {last})"
