"""A model by name: what every command's ``--model`` argument (and any script) can name."""

from __future__ import annotations

from pathlib import Path

from hookedclip.model.hooked import HookedCLIP


def load_model(spec: str, pretrained: str | None = None, device: str = "cpu") -> HookedCLIP:
    """Resolve a model argument: ``toy``, a directory written by ``HookedCLIP.save``, a local
    Hugging Face model directory (``hf:PATH``), or an open_clip model name (``pretrained``: an
    open_clip tag or checkpoint file; random weights without it)."""
    if spec == "toy":
        return HookedCLIP.from_pretrained("toy").to(device)
    if spec.startswith("hf:"):
        import transformers

        if not (Path(spec[3:]) / "config.json").is_file():  # else transformers reads the path as a hub repo id
            raise FileNotFoundError(
                f"{spec}: no Hugging Face model folder at {spec[3:]!r} (it needs the config.json "
                "and weights that save_pretrained writes); hf: takes a local folder"
            )
        return HookedCLIP.from_hf(transformers.AutoModel.from_pretrained(spec[3:]), device=device)
    if Path(spec).is_dir():
        return HookedCLIP.load(spec, device=device)
    return HookedCLIP.from_open_clip(spec, pretrained=pretrained, device=device)
