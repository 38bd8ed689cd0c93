"""Streaming first and second moments, mergeable across shards and ranks.

``RunningMoments`` keeps, in float64, the count ``n``, the mean ``c̄`` and the centred
scatter ``M2 = Σ (x − c̄)(x − c̄)ᵀ`` of rows of a ``[..., d]`` target. Batches and other
accumulators merge exactly with Chan et al.'s parallel update, so PCA, TextSpan and mean
ablation never need all activations in memory, and per-rank statistics combine into the
statistics of the whole dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass
class RunningMoments:
    """Count, mean ``[*shape, d]`` and scatter ``[*shape, d, d]`` of rows seen so far.

    ``shape`` is any leading structure kept apart (e.g. ``[layer, head]``): ``update`` takes
    ``[n, *shape, d]`` and accumulates over ``n`` only.
    """

    n: int
    mean: Tensor
    m2: Tensor | None  # None when only the mean is tracked

    @classmethod
    def empty(cls, shape: tuple[int, ...], d: int, covariance: bool = True, device=None) -> RunningMoments:
        mean = torch.zeros(*shape, d, dtype=torch.float64, device=device)
        m2 = torch.zeros(*shape, d, d, dtype=torch.float64, device=device) if covariance else None
        return cls(0, mean, m2)

    @classmethod
    def of(cls, x: Float[Tensor, "n *shape d"], covariance: bool = True) -> RunningMoments:
        """Moments of one batch (rows along the first axis)."""
        x = x.detach().to(torch.float64)
        n = x.shape[0]
        if n == 0:
            return cls.empty(tuple(x.shape[1:-1]), x.shape[-1], covariance, x.device)
        mean = x.mean(0)
        m2 = None
        if covariance:
            xc = x - mean
            m2 = torch.einsum("n...i,n...j->...ij", xc, xc)
        return cls(n, mean, m2)

    def update(self, x: Float[Tensor, "n *shape d"], chunk_bytes: int = 2**26) -> RunningMoments:
        """Add a batch of rows (in place); returns ``self``.

        The scatter is accumulated in place about a fixed shift ``c`` (the current mean, or
        the first chunk's mean when empty): with ``s = Σ(x − c)`` and ``S = Σ(x − c)(x − c)ᵀ``
        over the batch, the new moments are ``mean = c + s/N`` and ``M2 += S − s sᵀ/N`` (``N``
        the new count), exactly Chan's merge written for a shifted origin. Rows go through in
        chunks whose float64 copy stays under ``chunk_bytes``, so a large shard costs no more
        memory than a small one and no ``[*shape, d, d]`` temporary is made per chunk."""
        x = x.detach()
        if tuple(x.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(f"expected rows [n, {', '.join(map(str, self.mean.shape))}], got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return self
        rows = max(1, chunk_bytes // max(1, x[:1].numel() * 8))
        chunks = x.split(rows)
        if self.n == 0:  # a shift close to the data's mean keeps the shifted sums accurate
            self.mean = chunks[0].to(self.mean.device, torch.float64).mean(0)
        if self.m2 is not None and not self.m2.is_contiguous():
            self.m2 = self.m2.contiguous()
        shift, s = self.mean, torch.zeros_like(self.mean)
        for chunk in chunks:
            self._add_shifted(chunk, shift, s)
        self.n += x.shape[0]
        if self.m2 is not None:
            self.m2 -= torch.einsum("...i,...j->...ij", s, s) / self.n
        self.mean = shift + s / self.n
        return self

    def _add_shifted(self, chunk: Tensor, shift: Tensor, s: Tensor) -> None:
        """``s += Σ(x − c)`` and ``M2 += Σ(x − c)(x − c)ᵀ`` over one chunk, in place."""
        xc = chunk.to(shift.device, torch.float64) - shift  # [rows, *shape, d]
        s += xc.sum(0)
        if self.m2 is not None:
            d = xc.shape[-1]
            groups = xc.reshape(xc.shape[0], -1, d).transpose(0, 1)  # [groups, rows, d]
            self.m2.view(-1, d, d).baddbmm_(groups.transpose(1, 2), groups)

    def merge(self, other: RunningMoments) -> RunningMoments:
        """The moments of both sets of rows (Chan et al.'s pairwise update)."""
        if self.mean.shape != other.mean.shape:
            raise ValueError(f"cannot merge moments of shape {tuple(self.mean.shape)} and {tuple(other.mean.shape)}")
        if (self.m2 is None) != (other.m2 is None):
            raise ValueError("cannot merge moments with and without covariance")
        if other.n == 0:
            return RunningMoments(self.n, self.mean.clone(), None if self.m2 is None else self.m2.clone())
        if self.n == 0:
            return RunningMoments(other.n, other.mean.clone(), None if other.m2 is None else other.m2.clone())
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = None
        if self.m2 is not None:
            m2 = self.m2 + other.m2 + torch.einsum("...i,...j->...ij", delta, delta) * (self.n * other.n / n)
        return RunningMoments(n, mean, m2)

    def covariance(self, unbiased: bool = False) -> Float[Tensor, "*shape d d"]:
        """``M2 / n`` (biased, the default) or ``M2 / (n − 1)``."""
        if self.m2 is None:
            raise ValueError("these moments were accumulated without covariance")
        if self.n < 1 + int(unbiased):
            raise ValueError(f"covariance needs at least {1 + int(unbiased)} rows, have {self.n}")
        return self.m2 / (self.n - int(unbiased))

    def second_moment(self) -> Float[Tensor, "*shape d d"]:
        """The uncentred ``E[x xᵀ] = M2 / n + c̄ c̄ᵀ``."""
        return self.covariance() + torch.einsum("...i,...j->...ij", self.mean, self.mean)

    def state_dict(self) -> dict[str, Tensor]:
        state = {"n": torch.tensor(self.n), "mean": self.mean}
        if self.m2 is not None:
            state["m2"] = self.m2
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> RunningMoments:
        return cls(int(state["n"]), state["mean"].to(torch.float64), state.get("m2"))

    def all_reduce(self) -> RunningMoments:
        """Merge the moments of every rank of the default ``torch.distributed`` group
        (exact: sums of counts, count-weighted means and scatters with their correction)."""
        import torch.distributed as dist

        n = torch.tensor([float(self.n)], dtype=torch.float64, device=self.mean.device)
        total = n.clone()
        dist.all_reduce(total)
        weighted = self.mean * n
        dist.all_reduce(weighted)
        mean = weighted / total.clamp_min(1)
        m2 = None
        if self.m2 is not None:
            # Σ_r [M2_r + n_r (c̄_r − c̄)(c̄_r − c̄)ᵀ]
            delta = self.mean - mean
            m2 = self.m2 + torch.einsum("...i,...j->...ij", delta, delta) * n
            dist.all_reduce(m2)
        return RunningMoments(int(total.item()), mean, m2)
