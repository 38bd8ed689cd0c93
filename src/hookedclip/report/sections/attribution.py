"""The demo report's section on attribution to autoencoder latents: the shipped toy autoencoder on
the last-layer class token, Act×Grad of the shape prompts, and the deletion curves of Act×Grad
against its baselines."""

from __future__ import annotations

import torch

from hookedclip.report.sections.context import DemoContext
from hookedclip.report.viz import Section
from hookedclip.toy.attributes import SHAPES


def _auc(auc: dict, method: str) -> str:
    value, error = auc[method][:2]
    return f"{value:.1f} ± {error:.1f}"


def section_sae_attribution(ctx: DemoContext) -> Section:
    from hookedclip.methods import sae as S

    model = ctx.model
    with torch.no_grad():
        h = model.encode_image(ctx.tensors, stop_at_layer=model.cfg.n_layers)[:, 0]
    sae = S.toy(model).to(h).requires_grad_(False)  # the shipped toy autoencoder
    labels = S.attribute_names(sae.encode(h), ctx.attributes, min_active=3)
    texts = [f"a photo of a {s}." for s in SHAPES]
    targets = torch.as_tensor(ctx.labels("shape"))
    attribution = S.attribute(model, sae, residuals=h, texts=texts, labels=labels)
    head = S.output_head(model, texts=texts)
    scores = S.method_scores(model, sae, h, head, targets)
    curves = S.faithfulness(model, sae, scores, head, targets, residuals=h, steps=6)
    curves.plot(ctx.out_dir / "sae_deletion.png", title="Deleting latents in the order of each score")
    rows = []
    for b in range(3):
        for row in attribution.top(3, images=[b], texts=[int(targets[b])]):
            rows.append([str(b), row["text"], str(row["latent"]), row["label"], f"{row['R']:+.4f}"])
    auc = curves.auc()
    return Section(
        "Attribution to autoencoder latents",
        [
            f"The shipped toy autoencoder ({sae.d_sae} latents, k = {sae.k}; hookedclip.methods.sae.toy()) on the "
            "last-layer class token; each latent is named here by the attribute value it separates best. Act×Grad attributes each "
            "image's cosine to its shape prompt to the active latents (hookedclip.methods.sae.attribute, the closed "
            "form: no ViT pass per prompt).",
            "Deletion curves zero each image's top latents by score and read the cosine again from the cached residual "
            f"(the error dropped). Area under the curve (± one standard error over images), lower is better: "
            f"Act×Grad {_auc(auc, 'Act×Grad')}, logit lens {_auc(auc, 'LogitLens')}, random {_auc(auc, 'Random')}, "
            f"activation × logit lens {_auc(auc, 'Act×LogitLens')}. Once several latents are gone, the reconstruction is far from the "
            "image where Act×Grad's first-order estimate holds, and the curves' order can change.",
        ],
        figures=[("sae_deletion.png", "100·cos to the true shape prompt, mean ± one standard error over images")],
        tables=[(["image", "prompt", "latent", "named", "R"], rows)],
    )


__all__ = ["section_sae_attribution"]
