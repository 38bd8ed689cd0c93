"""The sections of the demo report (:mod:`hookedclip.report.demo`): each is a function
``(ctx: DemoContext) -> Section`` that writes its figures into the report folder.

``context`` (what every section shares) <- ``core`` (the toy world and the core analyses:
zero-shot accuracy, layer shares, head probes, mean-ablation), ``methods`` (TextSpan,
PCLens, segmentation), ``sith`` (SITH), ``sae_labels`` (autoencoder latents) and ``llava`` (the
toy LLaVA). The modules never import this package or ``demo``.
"""
