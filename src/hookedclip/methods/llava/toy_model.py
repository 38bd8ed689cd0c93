"""The toy LLaVA: the shipped toy CLIP as a frozen vision tower, a projector and a tiny Llama
language model, all inside a real ``transformers`` ``LlavaForConditionalGeneration``.

It answers four questions about a toy-world image, one word each: the shape, the shape's
colour, the background's texture and the background's colour. The tokenizer is word-level
over the question templates and the toy vocabulary. The tower's weights are the toy CLIP's
(converted to a ``CLIPVisionModel``), so :func:`~hookedclip.methods.llava.hooked_vision_tower`
can hand the LLaVA run to the toy :class:`HookedCLIP` itself, text tower included, and CLIP's
own zero-shot readout can be measured on the same (ablated) stream.

Weights (``weights/toy_llava.safetensors``) hold the projector and the language model only;
the tower is rebuilt from the shipped toy CLIP. ``weights/card.json`` records the recipe and
the measured accuracies; :mod:`hookedclip.methods.llava.toy_train` is the recipe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from hookedclip.model.hooked import HookedCLIP
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.world import BACKGROUNDS, COLORS, SHAPES, TEXTURES, ToyAttributes

#: The question for each attribute, and the answers it can have.
QUESTIONS: dict[str, str] = {
    "shape": "what shape is in the image ?",
    "color": "what colour is the shape ?",
    "texture": "what texture is the background ?",
    "background": "what colour is the background ?",
}
ANSWERS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "color": COLORS, "texture": TEXTURES, "background": BACKGROUNDS}
SPECIALS = ("<pad>", "<bos>", "<eos>", "<image>")
FEATURE_LAYER = -2  # like LLaVA-1.5: the residual stream entering the last block
LM_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 64,
}
WEIGHTS_FILE, CARD_FILE = "toy_llava.safetensors", "card.json"


class WordTokenizer:
    """Word-level tokenizer over the question templates and the answers (split on spaces)."""

    def __init__(self, words: list[str]) -> None:
        self.words = list(words)
        self.ids = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def default(cls) -> WordTokenizer:
        words = list(SPECIALS)
        for text in [*QUESTIONS.values(), *(" ".join(a) for a in ANSWERS.values())]:
            words += [w for w in text.split() if w not in words]
        return cls(words)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        unknown = [w for w in text.split() if w not in self.ids]
        if unknown:
            raise KeyError(f"words outside the toy vocabulary: {unknown}; it knows {self.words[len(SPECIALS) :]}")
        return [self.ids[w] for w in text.split()]

    def decode(self, ids) -> str:
        return " ".join(self.words[int(i)] for i in ids)

    def id(self, word: str) -> int:
        return self.encode(word)[0]


def to_hf_vision_tower(hooked: HookedCLIP) -> nn.Module:
    """The vision tower of ``hooked`` as a ``transformers`` ``CLIPVisionModel`` (the inverse of
    :func:`~hookedclip.loading.hf.from_hf` on a tower; the class token is pooled)."""
    import transformers as tf

    cfg = hooked.cfg.vision
    if not (cfg.class_token and cfg.ln_pre and cfg.pool_type == "tok" and not cfg.patch_bias):
        raise ValueError("only ViTs with a class token, ln_pre, class-token pooling and no patch bias convert")
    config = tf.CLIPVisionConfig(
        hidden_size=cfg.width,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.in_channels,
        hidden_act=cfg.act_fn,
        layer_norm_eps=cfg.ln_eps,
    )
    v = hooked.visual
    state = {
        "embeddings.class_embedding": v.class_embedding,
        "embeddings.patch_embedding.weight": v.embed.W,
        "embeddings.position_embedding.weight": v.pos_embed,
        "pre_layrnorm.weight": v.ln_pre.w,
        "pre_layrnorm.bias": v.ln_pre.b,
        "post_layernorm.weight": v.ln_post.w,
        "post_layernorm.bias": v.ln_post.b,
    }
    for i, block in enumerate(v.blocks):
        p, a = f"encoder.layers.{i}.", block.attn
        for name, W, b in (("q", a.W_Q, a.b_Q), ("k", a.W_K, a.b_K), ("v", a.W_V, a.b_V)):
            state[f"{p}self_attn.{name}_proj.weight"] = W.permute(0, 2, 1).reshape(-1, cfg.width)
            state[f"{p}self_attn.{name}_proj.bias"] = b.reshape(-1)
        state[f"{p}self_attn.out_proj.weight"] = a.W_O.reshape(-1, cfg.width).T
        state[f"{p}self_attn.out_proj.bias"] = a.b_O
        for ours, theirs in (("ln1", "layer_norm1"), ("ln2", "layer_norm2")):
            ln = getattr(block, ours)
            state[f"{p}{theirs}.weight"], state[f"{p}{theirs}.bias"] = ln.w, ln.b
        state[f"{p}mlp.fc1.weight"], state[f"{p}mlp.fc1.bias"] = block.mlp.W_in.T, block.mlp.b_in
        state[f"{p}mlp.fc2.weight"], state[f"{p}mlp.fc2.bias"] = block.mlp.W_out.T, block.mlp.b_out
    tower = tf.CLIPVisionModel(config)
    target = tower.state_dict()
    prefix = "vision_model." if next(iter(target)).startswith("vision_model.") else ""  # transformers 4 nests it
    tower.load_state_dict({prefix + k: t.detach().clone().contiguous() for k, t in state.items()})
    return tower.eval()


def build_llava(clip: HookedCLIP, tokenizer: WordTokenizer, seed: int = 0) -> nn.Module:
    """A ``LlavaForConditionalGeneration`` with ``clip``'s tower, a fresh projector and a fresh
    tiny Llama language model (seeded)."""
    import transformers as tf

    with torch.random.fork_rng(devices=[]):  # seeded initialisation; the caller's RNG is left as it was
        torch.manual_seed(seed)
        tower = to_hf_vision_tower(clip)
        config = tf.LlavaConfig(
            vision_config=tower.config,
            text_config=tf.LlamaConfig(
                vocab_size=len(tokenizer), pad_token_id=0, bos_token_id=1, eos_token_id=2, **LM_CONFIG
            ),
            image_token_index=tokenizer.id("<image>"),
            vision_feature_layer=FEATURE_LAYER,
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
        )
        llava = tf.LlavaForConditionalGeneration(config)
    owner = llava.model if hasattr(llava.model, "vision_tower") else llava
    owner.vision_tower.load_state_dict(tower.state_dict())
    llava.requires_grad_(False)
    return llava.eval()


@dataclass
class ToyLlava:
    """The toy LLaVA: ``model`` (a ``LlavaForConditionalGeneration``), its ``tokenizer``, and
    ``clip``, the toy CLIP whose tower it uses (hand it to ``hooked_vision_tower``)."""

    model: nn.Module
    tokenizer: WordTokenizer
    clip: HookedCLIP
    card: dict = field(default_factory=dict)

    @property
    def n_image_tokens(self) -> int:
        cfg = self.clip.cfg.vision
        return (cfg.image_size // cfg.patch_size) ** 2

    def prompt(self, attribute: str, n: int) -> Int[Tensor, "n seq"]:
        """``<bos> <image>×n_patches question`` for ``n`` images; the answer is the next token."""
        _check_attribute(attribute)
        tok = self.tokenizer
        ids = [tok.id("<bos>")] + [tok.id("<image>")] * self.n_image_tokens + tok.encode(QUESTIONS[attribute])
        return torch.tensor(ids).expand(n, -1).clone()

    def answer_ids(self, attribute: str) -> Int[Tensor, " n_answers"]:
        _check_attribute(attribute)
        return torch.tensor([self.tokenizer.id(a) for a in ANSWERS[attribute]])

    @torch.no_grad()
    def next_token_logits(self, images: Float[Tensor, "batch 3 32 32"], attribute: str) -> Float[Tensor, "batch vocab"]:
        """The language model's logits for the answer token (over the whole vocabulary)."""
        ids = self.prompt(attribute, images.shape[0])
        out = self.model(input_ids=ids, pixel_values=images, attention_mask=torch.ones_like(ids), logits_to_keep=1)
        return out.logits[:, -1]

    def answer(self, images: Tensor, attribute: str) -> tuple[Int[Tensor, " batch"], Float[Tensor, "batch n_answers"]]:
        """The greedy answer as an index into ``ANSWERS[attribute]`` (-1: a word that is not one of
        them) and the log-probabilities of every possible answer ``[batch, n_answers]``."""
        logp = self.next_token_logits(images, attribute).log_softmax(-1)
        answer_ids = self.answer_ids(attribute)
        top = logp.argmax(-1)
        index = (top[:, None] == answer_ids[None]).float().argmax(-1)
        index[~(top[:, None] == answer_ids[None]).any(-1)] = -1
        return index, logp[:, answer_ids]

    def classifier(self, attribute: str):
        """CLIP's zero-shot classifier for ``attribute`` on the toy CLIP, classes in ``ANSWERS`` order."""
        from hookedclip.toy.world import class_prompts
        from hookedclip.zeroshot import ZeroShotClassifier

        _check_attribute(attribute)
        prompts = class_prompts(attribute)
        return ZeroShotClassifier.from_prompts(self.clip, {a: prompts[a] for a in ANSWERS[attribute]})

    def answer_fn(self, attribute: str):
        """``images -> (answer index, log p of each answer)`` for :func:`~hookedclip.methods.llava.ablation_effects`."""
        _check_attribute(attribute)
        return lambda images: self.answer(images, attribute)


def _check_attribute(attribute: str) -> None:
    if attribute not in QUESTIONS:
        raise ValueError(f"unknown attribute {attribute!r}; the toy LLaVA answers {', '.join(QUESTIONS)}")


def labels_of(attributes: list[ToyAttributes], attribute: str) -> Int[Tensor, " n"]:
    """Each image's answer, as an index into ``ANSWERS[attribute]``."""
    _check_attribute(attribute)
    return torch.tensor([ANSWERS[attribute].index(getattr(a, attribute)) for a in attributes])


def toy_images(images: np.ndarray) -> Tensor:
    """uint8 toy-world images ``[N, 32, 32, 3]`` as the toy LLaVA's pixel values."""
    return images_to_tensor(images)


def weights_dir() -> Path:
    """The folder of the shipped toy LLaVA's weights and cards."""
    return Path(str(resources.files("hookedclip.methods.llava") / "weights"))


def toy(weights: str | Path | None = None) -> ToyLlava:
    """The shipped toy LLaVA (CPU, fp32, eval mode). ``weights``: another folder written by the recipe."""
    from safetensors.torch import load_file

    folder = Path(weights) if weights is not None else weights_dir()
    path = folder / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: train the toy LLaVA with hookedclip.methods.llava.toy_train.train_toy_llava "
            f"(out={folder})"
        )
    card = json.loads((folder / CARD_FILE).read_text()) if (folder / CARD_FILE).exists() else {}
    clip = HookedCLIP.from_pretrained("toy")
    tokenizer = WordTokenizer(card["vocabulary"]) if "vocabulary" in card else WordTokenizer.default()
    llava = build_llava(clip, tokenizer)
    state = load_file(str(path))
    missing, unexpected = llava.load_state_dict(state, strict=False)
    untrained = [k for k in missing if "vision_tower" not in k]
    if unexpected or untrained:
        raise ValueError(f"{path} does not fit the toy LLaVA: missing {untrained[:3]}, unexpected {unexpected[:3]}")
    return ToyLlava(llava.eval(), tokenizer, clip, card)


def trained_state(llava: nn.Module) -> dict[str, Tensor]:
    """What the recipe trains and ships: every parameter but the (frozen) vision tower's."""
    return {k: v.detach().contiguous() for k, v in llava.state_dict().items() if "vision_tower" not in k}
