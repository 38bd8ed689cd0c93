"""LLaVA encoder probing on a tiny random LlavaForConditionalGeneration (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from tests.conftest import randomize_

from hookedclip import HookedCLIP, ablation
from hookedclip.methods import llava

N_IMAGE_TOKENS = 16  # 16 px images, patch 4, class token dropped
IMAGE_TOKEN = 120


def tiny_llava(feature_layer=-2, strategy="default", vision=None, seed=5):
    torch.manual_seed(seed)
    config = tf.LlavaConfig(
        vision_config=vision
        or tf.CLIPVisionConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=16,
            patch_size=4,
            hidden_act="quick_gelu",
        ),
        text_config=tf.LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=64,
            vocab_size=128,
        ),
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
    )
    return randomize_(tf.LlavaForConditionalGeneration(config), seed).eval()


def inputs(llava, n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n_tokens = N_IMAGE_TOKENS + (llava.config.vision_feature_select_strategy == "full")
    text = torch.randint(0, 100, (n, 5), generator=gen)
    ids = torch.cat([text[:, :2], torch.full((n, n_tokens), IMAGE_TOKEN), text[:, 2:]], dim=1)
    images = torch.randn(n, 3, 16, 16, generator=gen)
    return {"input_ids": ids, "pixel_values": images, "attention_mask": torch.ones_like(ids)}


def logits(llava, batch):
    with torch.no_grad():
        return llava(**batch).logits


@pytest.mark.parametrize(
    "feature_layer,strategy", [(-2, "default"), (-1, "full"), (1, "default"), ([1, -1], "default")]
)
def test_hooked_tower_is_the_identity(feature_layer, strategy):
    model = tiny_llava(feature_layer, strategy)
    batch = inputs(model)
    plain = logits(model, batch)
    with llava.hooked_vision_tower(model) as hooked:
        assert isinstance(hooked, HookedCLIP)
        hooked_logits = logits(model, batch)
    assert (hooked_logits - plain).abs().max() < 1e-5
    assert type(model.model.vision_tower).__name__ == "CLIPVisionModel"  # restored on exit
    assert torch.equal(logits(model, batch), plain)


def test_generate_runs_inside_and_matches():
    model = tiny_llava()
    batch = inputs(model, n=1)
    with torch.no_grad():
        plain = model.generate(**batch, max_new_tokens=4, do_sample=False)
        with llava.hooked_vision_tower(model):
            ours = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert torch.equal(plain, ours)


def test_ablating_everything_changes_logits_and_nothing_changes_nothing():
    model = tiny_llava()
    batch = inputs(model)
    plain = logits(model, batch)
    with llava.hooked_vision_tower(model) as hooked:
        with ablation.zero_ablate(hooked, [], mode="total"):
            assert (logits(model, batch) - plain).abs().max() < 1e-5
        with ablation.zero_ablate(hooked, "all", mode="total"):
            changed = logits(model, batch)
    assert (changed - plain).abs().max() > 1e-2


def test_hooks_on_the_hooked_model_see_the_llava_run():
    model = tiny_llava(feature_layer=-2)
    batch = inputs(model)
    seen = []
    with llava.hooked_vision_tower(model) as hooked:
        with hooked.hooks(fwd_hooks=[("visual.blocks.1.hook_resid_post", lambda x, hook: seen.append(x.shape))]):
            logits(model, batch)
    assert seen == [torch.Size([2, 17, 32])]


def test_a_given_hooked_model_is_checked_and_used():
    model = tiny_llava()
    batch = inputs(model)
    hooked = HookedCLIP.from_hf(model)
    with llava.hooked_vision_tower(model, hooked) as used:
        assert used is hooked
    with pytest.raises(llava.LlavaTowerError, match="other weights.*first difference"):
        with llava.hooked_vision_tower(model, HookedCLIP.from_hf(tiny_llava(seed=6))):
            pass
    with pytest.raises(llava.LlavaTowerError, match="HookedCLIP"):
        with llava.hooked_vision_tower(model, torch.nn.Linear(2, 2)):
            pass
    assert torch.equal(logits(model, batch), logits(model, batch))


def test_bad_input_is_refused_before_any_work():
    siglip = tf.SiglipVisionConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4
    )
    with pytest.raises(llava.LlavaTowerError, match="SiglipVisionModel, not a CLIP ViT"):
        with llava.hooked_vision_tower(tiny_llava(vision=siglip)):
            pass
    with pytest.raises(llava.LlavaTowerError, match="vision_feature_layer -5 is out of range.*3 layers"):
        with llava.hooked_vision_tower(tiny_llava(feature_layer=-5)):
            pass
    with pytest.raises(llava.LlavaTowerError, match="LlavaForConditionalGeneration.*Linear"):
        with llava.hooked_vision_tower(torch.nn.Linear(2, 2)):
            pass


def test_direct_mode_edits_are_refused_inside():
    model = tiny_llava()
    batch = inputs(model)
    with llava.hooked_vision_tower(model) as hooked:
        with ablation.intervene(hooked, ["L0H0"], lambda x, c: x, mode="direct"):
            with pytest.raises(llava.LlavaTowerError, match="mode='total'"):
                logits(model, batch)


# ---------------------------------------------------------------------------- decomposition
@pytest.mark.parametrize("feature_layer", [-2, 3, 0])
def test_feature_rows_sum_to_the_hidden_state_llava_reads(feature_layer):
    model = tiny_llava(feature_layer)
    hooked = HookedCLIP.from_hf(model)
    images = inputs(model)["pixel_values"]
    stack = llava.decompose_features(hooked, images)
    index = feature_layer % 4
    assert stack.tensor.shape == (1 + index * 5, 2, 17, 32)
    assert stack.labels[:3] == ["embed", "L0H0", "L0H1"][: len(stack.labels[:3])]
    with torch.no_grad():
        truth = model.model.vision_tower(pixel_values=images, output_hidden_states=True).hidden_states[feature_layer]
    assert (stack.sum() - truth).abs().max() < 1e-5


def test_feature_layer_needs_a_llava_or_a_layer():
    from tests.conftest import tiny_open_clip

    plain = HookedCLIP.from_open_clip(tiny_open_clip())
    with pytest.raises(ValueError, match="pass layer="):
        llava.decompose_features(plain, torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        llava.decompose_features(plain, torch.randn(1, 3, 16, 16), layer=7)


def test_projector_rows_are_exact_for_the_linear_part_and_sum_to_the_output():
    model = tiny_llava()
    hooked = HookedCLIP.from_hf(model)
    images = inputs(model)["pixel_values"]
    stack = llava.decompose_features(hooked, images)
    patches = type(stack)(stack.tensor[:, :, 1:], stack.labels, stack.bias, stack.components)
    projector = model.model.multi_modal_projector
    projected = llava.through_projector(patches, projector)
    features = patches.sum()
    with torch.no_grad():
        assert (projected.pre.sum(0) + projector.linear_1.bias - projector.linear_1(features)).abs().max() < 1e-5
        assert (projected.rows.sum(0) + projected.bias - projector(features)).abs().max() < 1e-5
    assert 0 <= projected.sum_error < 1 and 0 <= projected.row_error < 1
    assert "tangent" in projected.summary()


def test_norm_shares_table_and_figure(tmp_path):
    model = tiny_llava()
    hooked = HookedCLIP.from_hf(model)
    stack = llava.decompose_features(hooked, inputs(model)["pixel_values"])
    shares = llava.norm_shares(stack)
    header, rows = shares._table()
    assert header[:2] == ["layer", "token"] and len(rows) == 2 + 2 * 2  # embed + 2 layers x (patch, cls)
    assert (shares.mean > 0).all() and shares.dominant("patch") in ("attn", "mlp")
    assert shares.to_csv().count("\n") == len(rows) + 1
    shares.plot(tmp_path / "shares.png")
    assert (tmp_path / "shares.png").stat().st_size > 1000
    loaded = llava.NormShares.load(shares.save(tmp_path / "saved"))
    assert torch.equal(loaded.mean, shares.mean)


# ---------------------------------------------------------------------------- effect on the answers
def _answer_fn(model, batch_ids):
    """Answers = the argmax over 5 fixed vocabulary ids at the last position."""
    words = torch.tensor([3, 7, 11, 13, 17])

    def answer(images):
        ids = batch_ids[: images.shape[0]]
        with torch.no_grad():
            logp = model(input_ids=ids, pixel_values=images).logits[:, -1].log_softmax(-1)[:, words]
        return logp.argmax(-1), logp

    return answer


def test_layer_selections():
    sel = llava.layer_selections(3, [0, 2], kinds=("attn", "both"))
    assert sel == {"attn<0": [], "attn<2": ["L0", "L1"], "both<0": [], "both<2": ["L0", "L1", "mlp0", "mlp1"]}
    with pytest.raises(ValueError, match="out of range"):
        llava.layer_selections(3, [4])
    with pytest.raises(ValueError, match="unknown kinds"):
        llava.layer_selections(3, [1], kinds=("heads",))


def test_ablation_effects_none_is_clean_and_everything_changes(tmp_path):
    model = tiny_llava()
    hooked = HookedCLIP.from_hf(model)
    batch = inputs(model, n=8)
    answer = _answer_fn(model, batch["input_ids"])
    labels = answer(batch["pixel_values"])[0]  # the clean answers: clean accuracy is 1
    reference = inputs(model, n=8, seed=1)["pixel_values"]
    effects = llava.layer_sweep(model, hooked, answer, batch["pixel_values"], labels, [0, 2], reference=reference)
    assert effects.row("none")["llm_accuracy"] == 1.0 and effects.row("attn<0")["logp_change"] == 0.0
    assert effects.row("both<2")["logp_change"] != 0.0
    assert torch.isnan(effects.clip_accuracy).all()  # no classifier given
    effects.plot(tmp_path / "sweep.png")
    assert "llm_accuracy" in effects.to_csv()
    with pytest.raises(ValueError, match="means=.*reference="):
        llava.ablation_effects(model, hooked, answer, batch["pixel_values"], labels, {"x": ["L0H0"]})


# ---------------------------------------------------------------------------- command line
def test_cli_decompose_on_a_saved_llava_folder(tmp_path, capsys):
    from hookedclip.cli import main

    tiny_llava().save_pretrained(tmp_path / "llava")
    out = tmp_path / "out"
    assert main(["llava", "decompose", "--model", f"hf:{tmp_path / 'llava'}", "--n", "4", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"shares.csv", "shares.png", "summary.txt"}
    text = (out / "summary.txt").read_text()
    assert "hidden_states[2]" in text and "projector: linear part exact" in text
    assert (
        main(
            ["llava", "decompose", "--model", f"hf:{tmp_path / 'llava'}", "--layer", "1", "--n", "4", "--out", str(out)]
        )
        == 0
    )
    assert "projector" not in (out / "summary.txt").read_text()  # LLaVA's projector reads another layer


def test_cli_ablate_on_the_toy(tmp_path):
    from hookedclip.cli import main

    out = tmp_path / "out"
    argv = ["llava", "ablate", "--n", "40", "--n-reference", "20", "--layers", "0,2", "--kinds", "attn", "--out"]
    assert main([*argv, str(out)]) == 0
    csv = (out / "effects.csv").read_text()
    assert csv.startswith("ablated,llm_accuracy") and "attn<2" in csv
    assert (out / "effects.png").stat().st_size > 1000


def test_means_from_a_store_equal_the_batch_means(tmp_path):
    from hookedclip.data.extract import extract

    model = tiny_llava()
    hooked = HookedCLIP.from_hf(model)
    images = inputs(model, n=6, seed=3)["pixel_values"]
    dataset = [{"image": image, "label": 0} for image in images]
    targets = ["visual.blocks.0.attn.hook_z", "visual.blocks.1.hook_mlp_out"]
    store = extract(hooked, dataset, targets, tmp_path / "store", batch_size=3, moments="mean", progress=False)
    means = llava.means_from_store(store, hooked, ["L0H2", "mlp1"])
    direct = ablation.component_means(hooked, images, components=["L0H2", "mlp1"], mode="total")
    for label in ("L0H2", "mlp1"):
        assert means[label].shape == direct[label].shape
        assert (means[label] - direct[label]).abs().max() < 1e-5
    with pytest.raises(KeyError, match="visual.blocks.0.hook_mlp_out.*extract it"):
        llava.means_from_store(store, hooked, ["mlp0"])


def test_feature_layer_0_runs_inside_the_hooked_tower():
    """transformers asks the tower for ``output_hidden_states=0`` there (falsy): the stand-in still
    returns the embeddings after pre_layrnorm, and LLaVA projects them."""
    model = tiny_llava(feature_layer=0)
    batch = inputs(model)
    seen = []
    handle = model.model.multi_modal_projector.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        with llava.hooked_vision_tower(model):
            logits(model, batch)
    finally:
        handle.remove()
    with torch.no_grad():
        truth = model.model.vision_tower(pixel_values=batch["pixel_values"], output_hidden_states=True).hidden_states[0]
    assert (seen[0] - truth[:, 1:]).abs().max() < 1e-5


def test_per_component_selections_make_a_table(tmp_path):
    model = tiny_llava()
    hooked = HookedCLIP.from_hf(model)
    batch = inputs(model, n=8)
    answer = _answer_fn(model, batch["input_ids"])
    labels = answer(batch["pixel_values"])[0]
    means = ablation.component_means(hooked, inputs(model, n=8, seed=1)["pixel_values"], mode="total")
    selections = {
        "L0H1": ["L0H1"],
        "mlp1": ["mlp1"],
        "all heads": ["heads"],
        "zero L1": lambda m: ablation.zero_ablate(m, ["L1"], mode="total"),
    }
    effects = llava.ablation_effects(model, hooked, answer, batch["pixel_values"], labels, selections, means=means)
    assert effects.names == ["none", "L0H1", "mlp1", "all heads", "zero L1"]
    assert effects.row("zero L1")["logp_change"] != 0.0
    assert effects.kinds == [None] * 5 and effects.row("none")["logp_change"] == 0.0
    assert effects.row("all heads")["logp_change"] != 0.0
    loaded = llava.AblationEffects.load(effects.save(tmp_path / "effects"))
    assert loaded.names == effects.names and torch.equal(loaded.llm_accuracy, effects.llm_accuracy)
