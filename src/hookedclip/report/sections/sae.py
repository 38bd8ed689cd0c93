"""The demo report's section on the shipped toy sparse autoencoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hookedclip.report.sections.context import DemoContext
from hookedclip.report.viz import Section


def section_sae(ctx: DemoContext) -> Section:
    from hookedclip.methods import sae as S
    from hookedclip.methods.sae.pretrained import evaluate

    model, n_layers = ctx.model, ctx.model.cfg.n_layers
    sae = S.toy(model)
    site = sae.hook_name(n_layers)
    with torch.no_grad():
        _, cache = model.run_with_cache(ctx.tensors, names_filter=site)
        residuals = cache[site][:, 0]
        plain = model.encode_image(ctx.tensors)
        with S.splice(model, sae, mode="error_kept"):
            kept = model.encode_image(ctx.tensors)
        with S.splice(model, sae, mode="recon_only"):
            recon = model.encode_image(ctx.tensors)
    measured = evaluate(sae, residuals)
    top_n = max(4, min(16, len(ctx.tensors) // 16))
    purity = S.attribute_purity(sae.encode(residuals), ctx.attributes, top_n=top_n, seed=ctx.seed)
    latents = sorted(purity["latents"], key=lambda x: -x["purity"])
    shares = [x["purity"] for x in latents]
    rows = [[str(x["latent"]), f"{x['attribute']} = {x['value']}", f"{100 * x['purity']:.0f}%"] for x in latents[:10]]
    mean = 100 * sum(shares) / max(len(shares), 1)
    return Section(
        "Sparse autoencoder: latents of the last-layer class token",
        [
            f"The shipped toy autoencoder (hookedclip.methods.sae.toy(): {sae.d_sae} latents, k = {sae.k}, trained "
            "from an activation store with the cosine reconstruction loss) reads the class token after the last "
            f"block. On these images: cosine(x̂, h) {measured['cosine']:.3f}, FVU of the LayerNorm-normalised "
            f"vectors {measured['fvu']:.3f}, {100 * measured['dead_fraction']:.0f}% of the latents never fire.",
            "Spliced into the model: with the error kept the image embedding changes by at most "
            f"{(kept - plain).abs().max():.1e} (it is the identity in value); with the reconstruction alone the "
            f"embedding keeps a cosine of {F.cosine_similarity(recon, plain).mean():.3f} to the plain one.",
            f"For each of the {len(shares)} latents that fire on at least {top_n} images, its {top_n} most "
            "activating images share one value of one attribute (shape, colour, texture or background) "
            f"{mean:.0f}% of the time on average; for random sets of {top_n} images the share is "
            f"{100 * purity['chance']:.0f}%. The purest latents:",
        ],
        tables=[(["latent", "shared value", f"share of its top {top_n} images"], rows)],
    )
