"""Conversion from Hugging Face transformers: CLIPModel, vision-only CLIP, and LLaVA's tower.

Every comparison is against the HF model's own forward (random weights, every vector
parameter perturbed so LayerNorm / bias mistakes show), to a relative error of 1e-5.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import random_tokens, randomize_, rel_err

from hookedclip import HookedCLIP
from hookedclip.loading.hf import hidden_state_hook_name, llava_feature_hook_names

TOL = 1e-5
VOCAB = 100
EOS = 60  # a "real" eos id (PR #24773 configs): ids above it exist, so argmax pooling would differ
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)


def vision_config(**kw) -> dict:
    cfg = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        projection_dim=16,
        hidden_act="quick_gelu",
    )
    cfg.update(kw)
    return cfg


def text_config(**kw) -> dict:
    cfg = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        vocab_size=VOCAB,
        eos_token_id=EOS,
        bos_token_id=1,
        pad_token_id=0,
        projection_dim=16,
        hidden_act="quick_gelu",
    )
    cfg.update(kw)
    return cfg


def tiny_clip(seed: int = 0, vision: dict | None = None, text: dict | None = None) -> tf.CLIPModel:
    torch.manual_seed(seed)
    config = tf.CLIPConfig(
        vision_config=vision_config(**(vision or {})), text_config=text_config(**(text or {})), projection_dim=16
    )
    model = randomize_(tf.CLIPModel(config), seed)
    with torch.no_grad():
        model.logit_scale.fill_(3.1)  # neither HF's init (2.6592) nor ours (4.6052)
    return model.eval()


def _features(out) -> torch.Tensor:
    """transformers 5 returns an output object (projected features in ``pooler_output``) from
    ``get_image_features`` / ``get_text_features``; 4.x returned the tensor."""
    if torch.is_tensor(out):
        return out
    assert out.pooler_output is not None, type(out).__name__
    return out.pooler_output


def _images(n: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _text_ids(legacy: bool, n: int = 4, seq: int = 12, seed: int = 0) -> torch.Tensor:
    """Hand-built ids that tell the two HF pooling rules apart.

    ``legacy`` (eos_token_id == 2, pooled at argmax): words, then the end token as the largest
    id, then zero padding; a literal 2 among the words, so pooling "the first 2" would be wrong.
    Otherwise (pooled at the first EOS): words drawn from the whole vocabulary (many above EOS,
    as tokens added after the original vocabulary), EOS, then padding with 0, EOS itself (as
    OpenAI's HF tokenizer pads) or the largest id, so argmax pooling would be wrong.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, seq, dtype=torch.long)
    for i in range(n):
        end = int(torch.randint(2, seq, (1,), generator=gen))
        words = torch.randint(3, VOCAB - 1, (end,), generator=gen)
        if legacy:
            words[int(torch.randint(0, end, (1,), generator=gen))] = 2
            ids[i, :end], ids[i, end] = words, VOCAB - 1
        else:
            words[words == EOS] = EOS + 1
            words[int(torch.randint(0, end, (1,), generator=gen))] = VOCAB - 2  # a word above EOS
            ids[i, :end], ids[i, end] = words, EOS
            ids[i, end + 1 :] = (0, EOS, VOCAB - 1)[i % 3]
    wrong = (ids == 2).int().argmax(-1) if legacy else ids.argmax(-1)
    right = ids.argmax(-1) if legacy else (ids == EOS).int().argmax(-1)
    assert (wrong != right).all()  # the other pooling rule picks another token in every row
    return ids


# ---------------------------------------------------------------------------- CLIPModel
@pytest.mark.parametrize(
    "act,legacy,eps",
    [("gelu", False, 1e-5), ("quick_gelu", False, 1e-3), ("gelu", True, 1e-3), ("quick_gelu", True, 1e-5)],
    ids=["gelu-eos", "quick_gelu-eos-eps1e-3", "gelu-legacy_argmax-eps1e-3", "quick_gelu-legacy_argmax"],
)
def test_clip_model_matches(act, legacy, eps):
    source = tiny_clip(
        1,
        vision=dict(hidden_act=act, layer_norm_eps=eps),
        text=dict(hidden_act=act, layer_norm_eps=eps, eos_token_id=2 if legacy else EOS),
    )
    model = HookedCLIP.from_hf(source)
    images, ids = _images(), _text_ids(legacy)
    with torch.no_grad():
        image_out = source.get_image_features(pixel_values=images)
        text_out = source.get_text_features(input_ids=ids)
        assert rel_err(_features(image_out), model.encode_image(images)) < TOL
        assert rel_err(_features(text_out), model.encode_text(ids)) < TOL
        logits = source(input_ids=ids, pixel_values=images).logits_per_image
        assert rel_err(logits, model(images, ids)) < TOL
    cfg = model.cfg
    assert _features(image_out).shape == (2, 16) and _features(text_out).shape == (4, 16)
    assert cfg.text.pool_type == ("argmax" if legacy else "eos")
    assert cfg.text.eos_token_id == (None if legacy else EOS)
    assert cfg.vision.act_fn == cfg.text.act_fn == act and cfg.vision.ln_eps == cfg.text.ln_eps == eps
    assert (cfg.source, cfg.model_name, cfg.image_mean) == ("hf", "clip", OPENAI_MEAN)
    assert not model.training and model.dtype == torch.float32


def test_model_name_comes_from_the_checkpoint_path():
    source = tiny_clip(2)
    source.config._name_or_path = "openai/clip-vit-base-patch32"
    assert HookedCLIP.from_hf(source).cfg.model_name == "openai/clip-vit-base-patch32"


# ---------------------------------------------------------------------------- vision-only
def _check_hidden_states(out, cache, n_layers: int, tol: float = TOL) -> None:
    """HF ``hidden_states[0]`` is block 0's input, ``hidden_states[i + 1]`` block i's output."""
    hidden = out.hidden_states
    assert len(hidden) == n_layers + 1
    assert rel_err(hidden[0], cache["visual.blocks.0.hook_resid_pre"]) < tol
    for i in range(n_layers):
        assert rel_err(hidden[i + 1], cache[f"visual.blocks.{i}.hook_resid_post"]) < tol, i
    assert rel_err(out.last_hidden_state, cache[f"visual.blocks.{n_layers - 1}.hook_resid_post"]) < tol


def _resid_and_pooled(name: str) -> bool:
    return "hook_resid" in name or name == "visual.hook_pooled"


def test_clip_vision_model_matches_at_every_layer():
    torch.manual_seed(3)
    source = randomize_(tf.CLIPVisionModel(tf.CLIPVisionConfig(**vision_config(num_hidden_layers=3))), 3).eval()
    model = HookedCLIP.from_hf(source)
    assert model.text is None and model.visual.W_proj is None and model.cfg.vision.output_dim is None
    images = _images(seed=1)
    with torch.no_grad():
        out = source(pixel_values=images, output_hidden_states=True)
        embedding, cache = model.run_with_cache(images, names_filter=_resid_and_pooled)
    _check_hidden_states(out, cache, 3)
    assert rel_err(out.pooler_output, cache["visual.hook_pooled"]) < TOL
    assert rel_err(out.pooler_output, embedding) < TOL


def test_clip_vision_model_with_projection_matches_at_every_layer():
    torch.manual_seed(4)
    config = tf.CLIPVisionConfig(**vision_config(num_hidden_layers=3, hidden_act="gelu"))
    source = randomize_(tf.CLIPVisionModelWithProjection(config), 4).eval()
    model = HookedCLIP.from_hf(source)
    assert model.text is None and model.cfg.vision.output_dim == 16
    images = _images(seed=2)
    with torch.no_grad():
        out = source(pixel_values=images, output_hidden_states=True)
        embedding, cache = model.run_with_cache(images, names_filter=_resid_and_pooled)
    _check_hidden_states(out, cache, 3)
    assert rel_err(out.image_embeds, embedding) < TOL
    assert rel_err(source.vision_model(pixel_values=images).pooler_output, cache["visual.hook_pooled"]) < TOL


def test_hidden_state_hook_names():
    assert hidden_state_hook_name(0, 3) == "visual.blocks.0.hook_resid_pre"
    assert hidden_state_hook_name(1, 3) == "visual.blocks.0.hook_resid_post"
    assert hidden_state_hook_name(3, 3) == hidden_state_hook_name(-1, 3) == "visual.blocks.2.hook_resid_post"
    assert hidden_state_hook_name(-2, 3) == "visual.blocks.1.hook_resid_post"
    assert hidden_state_hook_name(-4, 3) == "visual.blocks.0.hook_resid_pre"
    assert hidden_state_hook_name(-2, 2, tower="text") == "text.blocks.0.hook_resid_post"
    for bad in (4, -5):
        with pytest.raises(IndexError, match=str(bad)):
            hidden_state_hook_name(bad, 3)


# ---------------------------------------------------------------------------- LLaVA
def tiny_llava(feature_layer=-2, strategy="default", vision: tf.PreTrainedConfig | None = None):
    torch.manual_seed(5)
    config = tf.LlavaConfig(
        vision_config=vision or tf.CLIPVisionConfig(**vision_config(num_hidden_layers=3)),
        text_config=tf.LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=64,
            vocab_size=128,
        ),
        image_token_index=120,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
    )
    return randomize_(tf.LlavaForConditionalGeneration(config), 5).eval()


def _llava_projector_input(llava, images: torch.Tensor) -> torch.Tensor:
    """What LLaVA's multimodal projector receives: the vision features it reads."""
    seen = []
    handle = llava.model.multi_modal_projector.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    # transformers 5.23 asks the tower for hidden_states=vision_feature_layer, which is falsy
    # (nothing captured, TypeError) for layer 0: ask for all of them there.
    extra = {"output_hidden_states": True} if llava.config.vision_feature_layer == 0 else {}
    try:
        with torch.no_grad():
            llava.get_image_features(pixel_values=images, **extra)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("feature_layer,strategy", [(-2, "default"), (0, "full"), ([-1, 1], "default")])
def test_llava_vision_tower_matches_and_records_what_llava_reads(feature_layer, strategy, tmp_path):
    llava = tiny_llava(feature_layer, strategy)
    model = HookedCLIP.from_hf(llava)
    assert model.cfg.extra == {
        "llava_vision_feature_layer": feature_layer,
        "llava_vision_feature_select_strategy": strategy,
    }
    assert model.text is None and model.visual.W_proj is None and model.cfg.model_name == "llava"
    tower = llava.model.vision_tower
    images = _images(seed=3)
    with torch.no_grad():
        out = tower(pixel_values=images, output_hidden_states=True)
        _, cache = model.run_with_cache(images, names_filter=lambda n: "hook_resid" in n)
    _check_hidden_states(out, cache, 3)

    # The features LLaVA's projector reads, from our cache via cfg.extra.
    drop = 1 if strategy == "default" else 0
    ours = torch.cat([cache[name][:, drop:] for name in llava_feature_hook_names(model.cfg)], dim=-1)
    assert rel_err(_llava_projector_input(llava, images), ours) < TOL
    if feature_layer == -2:  # spelled out: hidden_states[-2] without CLS = block 1's output (3 layers)
        assert rel_err(out.hidden_states[-2][:, 1:], cache["visual.blocks.1.hook_resid_post"][:, 1:]) < TOL

    # The tower alone converts to the same model, without the LLaVA record.
    alone = HookedCLIP.from_hf(tower)
    assert alone.cfg.extra == {}
    with torch.no_grad():
        assert rel_err(model.encode_image(images), alone.encode_image(images)) < TOL
    # The record survives save / load (lists stay lists through JSON).
    model.save(tmp_path)
    assert HookedCLIP.load(tmp_path).cfg.extra == model.cfg.extra


def test_llava_feature_hook_names_need_a_llava_model():
    with pytest.raises(ValueError, match="LLaVA"):
        llava_feature_hook_names(HookedCLIP.from_hf(tiny_clip(6)).cfg)


@pytest.mark.large
def test_llava_1_5_tower_clip_model_matches():
    """A full ``CLIPModel`` with the config of openai/clip-vit-large-patch14-336 (LLaVA-1.5's
    tower; ~430M parameters, random weights), fp32: image and text embeddings, logits, and
    every vision hidden state. Its text config has eos_token_id 2: the legacy argmax pooling."""
    vision = tf.CLIPVisionConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    text = tf.CLIPTextConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=77,
        vocab_size=49408,
        projection_dim=768,
        hidden_act="quick_gelu",
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    config = tf.CLIPConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), projection_dim=768)
    start = time.perf_counter()
    source = _fast_random(tf.CLIPModel, config, seed=7)
    model = HookedCLIP.from_hf(source)
    assert (model.cfg.vision.n_tokens, model.cfg.text.pool_type) == (1 + 24**2, "argmax")
    images = _images(1, 336, seed=7)
    ids = random_tokens(2, 77, 49408, seed=7)  # SOT 49406 ... EOT 49407, zero padding
    with torch.no_grad():
        out = source(input_ids=ids, pixel_values=images, output_hidden_states=True)
        image_embedding, cache = model.run_with_cache(images, names_filter=lambda n: "hook_resid" in n)
        text_embedding = model.encode_text(ids)
        # CLIPModel.forward normalises image_embeds / text_embeds; the unnormalised features
        # (what get_image_features / get_text_features return) come from its tower outputs.
        image_features = _projected(out.vision_model_output, source.visual_projection)
        text_features = _projected(out.text_model_output, source.text_projection)
    _check_hidden_states(out.vision_model_output, cache, 24)
    assert rel_err(image_features, image_embedding) < TOL
    assert rel_err(text_features, text_embedding) < TOL
    assert rel_err(out.image_embeds, F.normalize(image_embedding, dim=-1)) < TOL
    assert rel_err(out.text_embeds, F.normalize(text_embedding, dim=-1)) < TOL
    logits = model.logit_scale.exp() * F.normalize(image_embedding, dim=-1) @ F.normalize(text_embedding, dim=-1).T
    assert rel_err(out.logits_per_image, logits) < TOL  # and model(images, ids) is this (test_model_io)
    print(f"LLaVA-1.5 tower CLIPModel: {time.perf_counter() - start:.1f}s")


def _projected(tower_output, projection: torch.nn.Module) -> torch.Tensor:
    """The projected, unnormalised features from a ``CLIPModel`` forward's tower output:
    transformers 5 builds it with get_*_features (projected ``pooler_output``); 4.x returned
    the tower's own output (pooled token, projected here)."""
    if int(tf.__version__.split(".")[0]) >= 5:
        return tower_output.pooler_output
    return projection(tower_output.pooler_output)


def _fast_random(cls, config, seed: int) -> torch.nn.Module:
    """``cls(config)`` without HF's (slow, for 300M parameters) initialisation, then filled
    with N(0, 0.02) matrices and randomised vectors (LayerNorm gains near one)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        model = cls(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    return randomize_(model, seed).eval()


# ---------------------------------------------------------------------------- property
@settings(max_examples=10, deadline=None)
@given(
    layers=st.integers(1, 3),
    heads=st.sampled_from([1, 2, 4]),
    head_dim=st.sampled_from([4, 8]),
    patch=st.sampled_from([2, 4]),
    grid=st.integers(2, 4),
    act=st.sampled_from(["gelu", "quick_gelu"]),
    eps=st.sampled_from([1e-5, 1e-6, 1e-3]),
    projection=st.sampled_from([8, 16]),
    seed=st.integers(0, 2**16),
)
def test_random_tiny_hf_vision_configs_match(layers, heads, head_dim, patch, grid, act, eps, projection, seed):
    torch.manual_seed(seed)
    width = heads * head_dim
    vision = tf.CLIPVisionConfig(
        **vision_config(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * width,
            image_size=patch * grid,
            patch_size=patch,
            hidden_act=act,
            layer_norm_eps=eps,
        )
    )
    text = tf.CLIPTextConfig(**text_config(num_hidden_layers=1))
    source = randomize_(
        tf.CLIPModel(tf.CLIPConfig(vision_config=vision, text_config=text, projection_dim=projection)), seed
    ).eval()
    model = HookedCLIP.from_hf(source)
    images = _images(2, patch * grid, seed)
    with torch.no_grad():
        assert rel_err(_features(source.get_image_features(pixel_values=images)), model.encode_image(images)) < TOL
    assert (model.cfg.vision.grid_size, model.cfg.vision.d_head, model.cfg.vision.output_dim) == (
        grid,
        head_dim,
        projection,
    )


# ---------------------------------------------------------------------------- unsupported
def _tiny_siglip_config() -> tf.SiglipVisionConfig:
    return tf.SiglipVisionConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4
    )


def test_unsupported_models_are_named():
    with pytest.raises(NotImplementedError, match="Linear.*CLIPVisionModel"):
        HookedCLIP.from_hf(torch.nn.Linear(2, 2))
    text_only = tf.CLIPTextModelWithProjection(tf.CLIPTextConfig(**text_config()))
    with pytest.raises(NotImplementedError, match="CLIPTextModelWithProjection.*image tower"):
        HookedCLIP.from_hf(text_only)
    with pytest.raises(NotImplementedError, match="SiglipVisionModel.*siglip_vision_model"):
        HookedCLIP.from_hf(tf.SiglipVisionModel(_tiny_siglip_config()))
    with pytest.raises(NotImplementedError, match="SiglipVisionModel.*LlavaForConditionalGeneration"):
        HookedCLIP.from_hf(tiny_llava(vision=_tiny_siglip_config()))


@pytest.mark.parametrize("act", ["relu", "gelu_new", "gelu_pytorch_tanh"])
def test_unsupported_activation_is_named(act):
    with pytest.raises(NotImplementedError, match=act):
        HookedCLIP.from_hf(tf.CLIPVisionModel(tf.CLIPVisionConfig(**vision_config(hidden_act=act))))
    with pytest.raises(NotImplementedError, match=f"text tower.*{act}"):
        HookedCLIP.from_hf(tiny_clip(7, vision=dict(hidden_act="gelu"), text=dict(hidden_act=act)))


# ---------------------------------------------------------------------------- io, dtype, copies
def _word_tokenizer() -> tf.PreTrainedTokenizerBase:
    """A tiny HF tokenizer: word-level, appends EOS, pads with EOS (as OpenAI's HF CLIP
    tokenizer does); "zebra" has an id above EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = "a photo of the cat dog big small red".split()
    vocab = {"<pad>": 0, "<unk>": 1, **{w: i + 3 for i, w in enumerate(words)}, "</s>": EOS, "zebra": VOCAB - 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="</s>", unk_token="<unk>")


def test_hf_tokenizer_is_wrapped_to_the_context_length():
    source = tiny_clip(8)
    tok = _word_tokenizer()
    model = HookedCLIP.from_hf(source, tokenizer=tok)
    texts = ["a photo of a zebra", "dog", "a big red zebra and a small cat"]
    tokens = model.tokenize(texts)
    assert tokens.dtype == torch.long and tokens.shape == (3, 16)
    batch = tok(texts, padding=True, return_tensors="pt")  # HF's usual call: shortest padding, attention mask
    assert torch.equal(tokens[:, : batch["input_ids"].shape[1]], batch["input_ids"])
    with torch.no_grad():
        assert rel_err(_features(source.get_text_features(**batch)), model.encode_text(tokens)) < TOL
    long_text = " ".join(["cat"] * 40)
    assert model.tokenize([long_text])[0, -1] == EOS  # truncated, end token kept
    # Anything else is used as given; a vision-only model takes no tokenizer.
    fn = lambda texts: torch.zeros(len(texts), 16, dtype=torch.long)  # noqa: E731
    assert HookedCLIP.from_hf(source, tokenizer=fn).tokenizer is fn
    with pytest.raises(ValueError, match="no text tower"):
        HookedCLIP.from_hf(tiny_llava(), tokenizer=tok)


def test_clip_vocabulary_gets_the_offline_bpe_tokenizer():
    source = tiny_clip(9, text=dict(vocab_size=49408, eos_token_id=49407, bos_token_id=49406, pad_token_id=49407))
    model = HookedCLIP.from_hf(source)
    tokens = model.tokenize(["a photo of a cat", "a dog"])
    assert tokens.shape == (2, 16) and (tokens == 49407).any(-1).all()
    with torch.no_grad():
        assert rel_err(_features(source.get_text_features(input_ids=tokens)), model.encode_text(tokens)) < TOL
    assert HookedCLIP.from_hf(tiny_clip(9)).tokenizer is None  # a vocabulary the BPE tokenizer does not fit


def test_image_mean_and_std_reach_the_preprocessing():
    from PIL import Image

    source = tf.CLIPVisionModel(tf.CLIPVisionConfig(**vision_config()))
    gray = Image.new("RGB", (16, 16), (51, 51, 51))  # 0.2
    default = HookedCLIP.from_hf(source)
    assert default.cfg.image_mean == OPENAI_MEAN
    custom = HookedCLIP.from_hf(source, image_mean=[0.2, 0.2, 0.2], image_std=(0.5, 0.5, 0.5))
    assert custom.cfg.image_mean == (0.2, 0.2, 0.2) and custom.cfg.image_std == (0.5, 0.5, 0.5)
    assert custom.preprocess(gray).abs().max() < 1e-6
    assert default.preprocess(gray).abs().max() > 0.5
    with pytest.raises(ValueError, match="3 values"):
        HookedCLIP.from_hf(source, image_mean=(0.5, 0.5))


def test_weights_are_copied_and_keep_the_source_dtype():
    torch.manual_seed(10)
    source = randomize_(tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(**vision_config())), 10).eval()
    model = HookedCLIP.from_hf(source)
    before = source.vision_model.post_layernorm.weight.clone()
    with torch.no_grad():
        model.visual.ln_post.w.zero_()
        model.visual.blocks[0].attn.W_Q.zero_()
    assert torch.equal(source.vision_model.post_layernorm.weight, before)
    assert source.vision_model.encoder.layers[0].self_attn.q_proj.weight.abs().sum() > 0
    assert all(p.is_contiguous() and p.requires_grad for p in model.parameters())

    half = HookedCLIP.from_hf(source.to(torch.bfloat16))
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in half.parameters()} == {"cpu"}
    images = _images(seed=4).to(torch.bfloat16)
    with torch.no_grad():
        assert rel_err(source(pixel_values=images).image_embeds.float(), half.encode_image(images).float()) < 2e-2
