"""Keyword options one function shares with its twin: the twin takes the reference's names and
defaults, and refuses a name it does not know."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import random_tokens

from hookedclip._options import completed
from hookedclip.decompose import decompose_text, estimate_memory, plan_chunks
from hookedclip.methods.pclens.pca import RankOptions, pca_from_data, pca_from_moments


def test_completed_fills_the_reference_defaults_and_keeps_what_is_given():
    options = completed(pca_from_data, RankOptions, {"max_pcs": 3}, "twin")
    assert options == {"threshold": 0.99, "max_pcs": 3, "energy": "singular", "sign": "canonical"}


def test_completed_refuses_an_unknown_name_naming_the_function_and_the_known_ones():
    with pytest.raises(TypeError, match=r"twin\(\) got unexpected option\(s\) \['max_pc'\]; it accepts .*max_pcs"):
        completed(pca_from_data, RankOptions, {"max_pc": 3}, "twin")


def test_pca_from_moments_takes_pca_from_data_options():
    from hookedclip.data.stats import RunningMoments

    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for options in ({}, {"max_pcs": 2}, {"threshold": 0.5, "energy": "variance"}):
        a, b = pca_from_data(x, **options), pca_from_moments(RunningMoments.of(x), **options)
        assert a.k == b.k
        torch.testing.assert_close(a.singular_values, b.singular_values)
    with pytest.raises(TypeError, match="pca_from_moments"):
        pca_from_moments(RunningMoments.of(x), n_texts=3)


def test_decompose_text_takes_decompose_image_options(tiny_model):
    model = copy.deepcopy(tiny_model).double()  # the fixture is shared
    tokens = random_tokens(2, model.cfg.text.context_length, model.cfg.text.vocab_size, seed=3)
    default = decompose_text(model, tokens)
    spelled = decompose_text(model, tokens, positions="cls", components="all", ln_mode="reference", normalize=True)
    torch.testing.assert_close(default.tensor, spelled.tensor)
    assert decompose_text(model, tokens, components=["L0-1"]).labels[-1] == "rest"
    with pytest.raises(TypeError, match=r"decompose_text\(\) got unexpected option\(s\) \['target'\]"):
        decompose_text(model, tokens, target="embed")


def test_plan_chunks_takes_estimate_memory_options_by_keyword(tiny_model):
    batch, bound = 4, estimate_memory(tiny_model, 4, positions="all", per_pass=2, head_chunk=1)
    per_pass, heads = plan_chunks(tiny_model, batch, max_memory=bound, positions="all")
    assert estimate_memory(tiny_model, batch, positions="all", per_pass=per_pass, head_chunk=heads) <= bound
    with pytest.raises(TypeError):
        plan_chunks(tiny_model, batch, "all")  # a positional option is refused, not read as max_memory


def test_add_caching_hooks_and_cache_take_get_caching_hooks_options(tiny_model, images):
    store = tiny_model.add_caching_hooks("visual.hook_out", dtype=torch.float64, remove_batch_dim=False)
    out = tiny_model.encode_image(images)
    tiny_model.reset_hooks()
    assert store["visual.hook_out"].dtype == torch.float64
    torch.testing.assert_close(store["visual.hook_out"].float(), out)
    with tiny_model.cache("visual.hook_out", pos_slice=0, device="cpu") as cache:
        tiny_model.encode_image(images)
    torch.testing.assert_close(cache["visual.hook_out"], out)
    with pytest.raises(TypeError), tiny_model.cache("visual.hook_out", incl_bwdd=True):
        pass


def test_label_with_takes_label_pcs_options():
    from hookedclip.methods.pclens import PCLensResult

    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = PCLensResult({"L0H0": pca_from_data(x, "L0H0", max_pcs=2)}, None)
    texts = torch.randn(6, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    result.label_with(texts, list("abcdef"), n_texts=2)
    assert result.settings == {"n_texts": 2, "center_texts": True, "use_projector": True}
    with pytest.raises(TypeError, match="label_with"):
        result.label_with(texts, list("abcdef"), n_text=2)
