"""The TopK sparse autoencoder: ``a = TopK(W_enc h + b_enc)``, ``x̂ = W_dec a``.

Shapes follow the reference: ``W_enc [H, D]``, ``b_enc [H]``, ``W_dec [D, H]`` with unit-norm
columns (the dictionary atoms ``d_j``), no decoder bias and no input normalisation. ``D`` is the
model width at the hook point, ``H`` the number of latents and ``k`` how many stay active per
vector.

The activation rule is an option: ``"topk"`` keeps the ``k`` largest pre-activations at their raw
values, negative ones included (how the published checkpoints were trained); ``"topk_relu"``
keeps them and clamps negatives to zero (the common variant).

The autoencoder is a :class:`~hookedclip.hooks.HookedRootModule` with six hook points, so
``sae.hooks(...)``, ``run_with_cache``-style recording and every hook function work on it::

    hook_sae_input       h            [..., D]
    hook_sae_acts_pre    z            [..., H]   pre-activations
    hook_sae_acts_post   a            [..., H]   the code, exactly zero outside the top k
    hook_sae_recons      x̂ = W_dec a  [..., D]
    hook_sae_error       ε = h − x̂    [..., D]
    hook_sae_output      h'           [..., D]   what the splice writes back (see ``forward``)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from hookedclip.hooks import HookedRootModule, HookPoint
from hookedclip.identity import as_identity, check_same_model
from hookedclip.names import act_name

Activation = Literal["topk", "topk_relu"]
SpliceMode = Literal["error_kept", "recon_only", "off"]
Token = Literal["cls", "spatial"]
SPLICE_MODES = ("error_kept", "recon_only", "off")
FORMAT = "hookedclip-topk-sae-v1"


@dataclass(frozen=True)
class SAEConfig:
    """What an autoencoder is and where it reads.

    ``layer``: the block after which it reads the residual stream (``resid_post``; negative
    counts from the end; ``None`` for an autoencoder not tied to a model); ``token``: ``"cls"``
    (the class token) or ``"spatial"`` (every patch token, class token excluded).
    """

    d_in: int
    d_sae: int
    k: int
    activation: Activation = "topk"
    layer: int | None = None
    token: Token = "cls"

    def __post_init__(self) -> None:
        if self.activation not in ("topk", "topk_relu"):
            raise ValueError(f"activation must be 'topk' or 'topk_relu', got {self.activation!r}")
        if self.token not in ("cls", "spatial"):
            raise ValueError(f"token must be 'cls' or 'spatial', got {self.token!r}")
        if not 0 < self.k <= self.d_sae:
            raise ValueError(
                f"k = {self.k} active latents is impossible with d_sae = {self.d_sae} latents: choose 1 <= k <= d_sae"
            )


class TopKSAE(HookedRootModule):
    """A TopK sparse autoencoder with hook points (module docstring). ``model`` is the
    :func:`~hookedclip.identity.model_identity` of the model whose activations it was trained on
    (``None`` until known); pass the model or its identity."""

    def __init__(self, cfg: SAEConfig, model=None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cfg = cfg
        self.model_identity = as_identity(model)
        self.W_enc = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae, dtype=dtype))
        for name in ("input", "acts_pre", "acts_post", "recons", "error", "output"):
            setattr(self, f"hook_sae_{name}", HookPoint())
        self.reset_parameters()
        self.setup()

    # ------------------------------------------------------------------ parameters
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Independent uniform initialisations with bound ``1/√fan_in`` (as ``nn.Linear``'s), unit atoms."""
        with torch.no_grad():
            bound_enc, bound_dec = self.cfg.d_in**-0.5, self.cfg.d_sae**-0.5
            self.W_enc.uniform_(-bound_enc, bound_enc, generator=generator)
            self.b_enc.uniform_(-bound_enc, bound_enc, generator=generator)
            self.W_dec.uniform_(-bound_dec, bound_dec, generator=generator)
        self.normalize_decoder_()

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every atom (column of ``W_dec``) to unit norm; trainers call it after each step."""
        self.W_dec.div_(self.W_dec.norm(dim=0, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).tiny))

    @property
    def k(self) -> int:
        return self.cfg.k

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    # ------------------------------------------------------------------ encode / decode
    def encode_pre(self, h: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """``z = W_enc h + b_enc``."""
        self._check_width(h)
        return h @ self.W_enc.T + self.b_enc

    def select(self, z: Float[Tensor, "*batch d_sae"]) -> tuple[Float[Tensor, "*batch k"], Int[Tensor, "*batch k"]]:
        """The kept values and their latent indices (largest first; ties go to the lower index
        as ``torch.topk`` breaks them), after the activation rule."""
        values, indices = z.topk(self.k, dim=-1)
        if self.cfg.activation == "topk_relu":
            values = values.clamp_min(0)
        return values, indices

    def encode(self, h: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """The dense code ``a``: the kept values at their indices, exact zeros elsewhere."""
        values, indices = self.select(self.encode_pre(h))
        return densify(values, indices, self.d_sae)

    def decode(self, a: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_in"]:
        """``x̂ = W_dec a`` from a dense code."""
        return a @ self.W_dec.T

    def decode_sparse(
        self, values: Float[Tensor, "*batch k"], indices: Int[Tensor, "*batch k"]
    ) -> Float[Tensor, "*batch d_in"]:
        """``x̂ = Σ_i values_i d_{indices_i}``: gathers the k active atoms instead of a dense
        ``[.., H] × [H, D]`` product (equal to :meth:`decode` of the dense code)."""
        # rows of a contiguous [H, D] copy: gathering from the transposed view is strided, ~30x slower
        atoms = self.W_dec.T.contiguous()
        k = indices.shape[-1]
        flat = F.embedding_bag(
            indices.reshape(-1, k), atoms, per_sample_weights=values.reshape(-1, k).to(atoms.dtype), mode="sum"
        )
        return flat.reshape(*values.shape[:-1], self.d_in)

    # ------------------------------------------------------------------ forward
    def forward(self, h: Float[Tensor, "*batch d_in"], mode: SpliceMode = "error_kept") -> Float[Tensor, "*batch d_in"]:
        """What a splice writes back in place of ``h``:

        * ``"error_kept"``: ``h' = x̂ + stopgrad(h − x̂)``, equal to ``h`` in value, with gradients
          flowing into the code (and the encoder) and the error a constant. The error is always
          that of the unedited code, so an edit of the code (``hook_sae_acts_post``) or of the
          reconstruction (``hook_sae_recons``) reaches ``h'`` as it would with the error dropped;
        * ``"recon_only"``: ``h' = x̂``, the error dropped;
        * ``"off"``: ``h' = h``; the autoencoder only observes (its hook points still fire).
        """
        if mode not in SPLICE_MODES:
            raise ValueError(f"mode must be one of {SPLICE_MODES}, got {mode!r}")
        h = self.hook_sae_input(h)
        values, indices = self.select(self.hook_sae_acts_pre(self.encode_pre(h)))
        dense = densify(values, indices, self.d_sae)
        clean = self.decode_sparse(values, indices)
        a = self.hook_sae_acts_post(dense)
        # The gather is exact only while no hook can replace or edit the code, or read its gradient.
        untouched = a is dense and not self.hook_sae_acts_post.has_hooks()
        recons = self.hook_sae_recons(clean if untouched else self.decode(a))
        error = self.hook_sae_error(h - clean)
        if mode == "error_kept":
            out = recons + error.detach()
        elif mode == "recon_only":
            out = recons
        else:
            out = h
        return self.hook_sae_output(out)

    def _check_width(self, h: Tensor) -> None:
        if h.shape[-1] != self.d_in:
            raise ValueError(
                f"this autoencoder reads vectors of width {self.d_in}, got {tuple(h.shape)}: it was trained "
                "on another model or hook point (check sae.cfg and sae.model_identity)"
            )

    # ------------------------------------------------------------------ identity
    def check_model(self, model) -> None:
        """Raise :class:`~hookedclip.identity.ModelMismatch` unless ``model`` is the model this
        autoencoder was trained on (nothing is checked when none was recorded)."""
        if self.model_identity is not None:
            check_same_model(self.model_identity, model, what="this autoencoder")

    def __repr__(self) -> str:
        c = self.cfg
        where = "" if c.layer is None else f", layer={c.layer}, token={c.token!r}"
        return f"TopKSAE(d_in={c.d_in}, d_sae={c.d_sae}, k={c.k}, activation={c.activation!r}{where})"

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write ``path/sae.safetensors`` (``W_enc``, ``b_enc``, ``W_dec``) and ``path/sae.json``
        (the config, the hook point and the model identity)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, path / "sae.safetensors")
        hook = (
            None if self.cfg.layer is None else {"site": "resid_post", "layer": self.cfg.layer, "token": self.cfg.token}
        )
        meta = {"format": FORMAT, "cfg": asdict(self.cfg), "model": self.model_identity, "hook": hook}
        (path / "sae.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, model=None, device: str | torch.device = "cpu") -> TopKSAE:
        """Read what :meth:`save` wrote; with ``model``, refuse one it was not trained on."""
        path = Path(path)
        if not (path / "sae.json").exists():
            raise FileNotFoundError(f"{path / 'sae.json'} not found: is {path} a folder written by TopKSAE.save?")
        meta = json.loads((path / "sae.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} holds format {meta.get('format')!r}, this library reads {FORMAT!r}")
        state = load_file(path / "sae.safetensors", device=str(device))
        sae = cls(SAEConfig(**meta["cfg"]), model=meta.get("model"), dtype=state["W_enc"].dtype).to(device)
        sae.load_state_dict(state)
        if model is not None:
            sae.check_model(model)
        return sae

    def hook_name(self, n_layers: int | None = None) -> str | None:
        """The residual-stream hook point this autoencoder reads (``None`` when not tied to a
        layer); a negative layer needs the model's ``n_layers``."""
        if self.cfg.layer is None:
            return None
        return act_name("resid_post", self.cfg.layer, n_layers=n_layers)


def densify(
    values: Float[Tensor, "*batch k"], indices: Int[Tensor, "*batch k"], size: int
) -> Float[Tensor, "*batch size"]:
    """Scatter the kept values into a zero code of ``size`` latents."""
    return torch.zeros(*values.shape[:-1], size, dtype=values.dtype, device=values.device).scatter(-1, indices, values)
