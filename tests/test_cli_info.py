"""`hookedclip info`: the README's command family, on a real architecture with random weights."""

from __future__ import annotations

import re

from hookedclip.cli import main

# Per block: resid_pre, attn_out, resid_mid, mlp_out, resid_post; ln1 and ln2 scale and
# normalized; attn q, k, v, attn_scores, pattern, z, result; mlp pre and post.
PER_BLOCK = 5 + 4 + 7 + 2 + 5  # + the TransformerLens input hooks: attn_in, q/k/v_input, mlp_in
# Outside the blocks: embed, pos_embed, pooled, out; visual ln_pre and ln_post, text ln_final.
VISUAL_EXTRA, TEXT_EXTRA = 4 + 2 + 2, 4 + 2
VIT_B_32_HOOKS = 12 * PER_BLOCK + VISUAL_EXTRA + 12 * PER_BLOCK + TEXT_EXTRA


def test_info_vit_b_32_prints_summary_and_every_hook_point(capsys):
    assert main(["info", "ViT-B-32", "--all-hooks"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ViT-B-32 (source: open_clip)")
    assert (
        "visual: 12 layers, d_model 768, 12 heads x d_head 64, d_mlp 3072, gelu; "
        "image 224 px, patch 32, 50 tokens; pool tok; ln_pre yes; d_out 512"
    ) in text
    assert "text: 12 layers, d_model 512, 8 heads x d_head 64, d_mlp 2048, gelu; context 77, vocab 49408" in text
    assert f"hook points ({VIT_B_32_HOOKS}):" in text
    listed = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    assert len(listed) == len(set(listed)) == VIT_B_32_HOOKS
    assert "visual.blocks.11.attn.hook_z" in listed and "text.blocks.11.attn.hook_result" in listed
    assert not any(name.startswith(("visual.blocks.12.", "text.blocks.12.")) for name in listed)


def test_info_default_collapses_layers(capsys):
    """The README form: one line per pattern, with the total count."""
    assert main(["info", "ViT-B-32"]) == 0
    text = capsys.readouterr().out
    assert f"hook points ({VIT_B_32_HOOKS}):" in text
    listed = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    assert "visual.blocks.{l}.attn.hook_z" in listed
    assert not any(re.search(r"blocks\.\d", name) for name in listed)
    assert len(listed) == 2 * PER_BLOCK + VISUAL_EXTRA + TEXT_EXTRA


def test_unknown_pretrained_tag_is_a_clean_error(capsys):
    """Exit status 2 and one line naming the tag (``main`` is the console script's entry point)."""
    assert main(["info", "ViT-B-32", "--pretrained", "nosuch"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("hookedclip info: error: open_clip has no pretrained tag 'nosuch' for ViT-B-32")
    assert "laion2b_s34b_b79k" in captured.err  # the known tags are listed
