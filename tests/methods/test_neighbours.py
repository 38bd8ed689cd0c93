"""Nearest-neighbour search (hookedclip.methods.neighbours): the scores, the streaming top-k and
the component spaces of TextSpan's and PCLens's image retrieval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hookedclip.decompose import decompose_image
from hookedclip.methods.neighbours import TopK, embedding_space, head_space, nearest, nearest_images, scores

SETTINGS = settings(deadline=None, max_examples=30, derandomize=True)


def batches_of(x: torch.Tensor, sizes: list[int]):
    """Split ``x`` into consecutive batches of the given sizes (the rest in one last batch)."""
    start = 0
    for size in sizes:
        if start >= len(x):
            return
        yield x[start : start + size]
        start += size
    if start < len(x):
        yield x[start:]


@st.composite
def data(draw):
    n, d = draw(st.integers(1, 60)), draw(st.integers(2, 12))  # d = 1: cosines all tie at ±1
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    sizes = draw(st.lists(st.integers(1, 17), min_size=1, max_size=8))
    return x, sizes, draw(st.integers(1, 20)), gen


@SETTINGS
@given(data(), st.sampled_from(["score", "score_vis"]), st.booleans())
def test_streaming_topk_equals_full_sort(case, score, largest):
    x, sizes, k, gen = case
    q = torch.randn(x.shape[1], generator=gen, dtype=torch.float64)
    found = nearest(q, batches_of(x, sizes), k, score, largest)
    full = scores(x, q, score)
    order = torch.argsort(full, descending=largest)[: min(k, len(x))]
    assert found.indices.tolist() == order.tolist()
    torch.testing.assert_close(found.values, full[order])


@SETTINGS
@given(data())
def test_query_equal_to_an_item_ranks_itself_first(case):
    x, sizes, k, gen = case
    i = int(torch.randint(len(x), (1,), generator=gen))
    x = x + 1e-3 * torch.arange(len(x), dtype=x.dtype)[:, None]  # no two items parallel by accident
    assert nearest(x[i], batches_of(x, sizes), k, "score_vis").indices[0] == i
    unit = F.normalize(x, dim=-1)  # on a sphere the dot product ranks like the cosine
    assert nearest(unit[i], batches_of(unit, sizes), k, "score").indices[0] == i


def test_topk_memory_is_bounded():
    top = TopK(3)
    for _ in range(50):
        top.update(torch.randn(100))
        assert len(top.values) == len(top.indices) == 3
    assert top.seen == 5000 and top.indices.max() < 5000


def test_explicit_indices_and_bottom_k():
    top = TopK(2, largest=False)
    top.update(torch.tensor([5.0, 1.0, 3.0]), torch.tensor([10, 11, 12]))
    top.update(torch.tensor([0.5]), torch.tensor([99]))
    assert top.result().indices.tolist() == [99, 11]


def test_self_score_needs_full_embeddings_and_ignores_query():
    gen = torch.Generator().manual_seed(0)
    e_sel, e = torch.randn(10, 4, generator=gen), torch.randn(10, 4, generator=gen)
    found = nearest(None, [(e_sel[:6], e[:6]), (e_sel[6:], e[6:])], k=10, score="self")
    expected = (e_sel * e).sum(-1)
    assert found.indices.tolist() == torch.argsort(expected, descending=True).tolist()
    with pytest.raises(ValueError, match="full embeddings"):
        scores(e_sel, None, "self")
    with pytest.raises(ValueError, match="needs a query"):
        scores(e_sel, None, "score")
    with pytest.raises(ValueError, match="score must be"):
        scores(e_sel, e[0], "cosine")


def test_head_space_is_the_heads_cls_contribution(tiny_model, images):
    space = head_space(tiny_model, "L1H0")
    expected = decompose_image(tiny_model, images, components=["L1H0"]).tensor[0]
    torch.testing.assert_close(space(images), expected)


@pytest.mark.parametrize("make_space", [lambda m: head_space(m, "L1H1"), embedding_space])
def test_dataset_image_as_query_finds_itself(tiny_model, make_space):
    gen = torch.Generator().manual_seed(3)
    pool = torch.randn(11, 3, 16, 16, generator=gen)
    space = make_space(tiny_model)
    found = nearest_images(tiny_model, pool[7], [pool[:4], pool[4:9], pool[9:]], space, k=5, score="score_vis")
    assert found.indices[0] == 7 and found.values[0] == pytest.approx(1.0, abs=1e-5)


def test_self_score_ranks_by_alignment_with_the_embedding(tiny_model):
    gen = torch.Generator().manual_seed(4)
    pool = torch.randn(11, 3, 16, 16, generator=gen)
    space = head_space(tiny_model, "L0H1")
    found = nearest_images(tiny_model, None, [pool[:4], pool[4:]], space, k=11, score="self")
    expected = (space(pool) * tiny_model.encode_image(pool, normalize=True)).sum(-1)
    assert found.indices.tolist() == torch.argsort(expected, descending=True).tolist()


# ---------------------------------------------------------------------------- a PC selection's space
@pytest.fixture
def pc_result(tiny_model):
    from hookedclip.methods import pclens

    fit_images = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    return pclens.fit(tiny_model, fit_images.split(20), components=["L0-1"])  # no texts: Π = I


def test_selection_space_query_finds_itself(tiny_model, pc_result):
    from hookedclip.methods.neighbours import selection_space

    pool = torch.randn(11, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    space = selection_space(tiny_model, pc_result, [("L1H0", 0), ("L1H1", 1), ("L0H2", 0)])
    found = nearest_images(tiny_model, pool[6], [pool[:5], pool[5:]], space, k=3, score="score_vis")
    assert found.indices[0] == 6 and found.values[0] == pytest.approx(1.0, abs=1e-6)


def test_selection_space_ranks_by_the_selected_coordinates_only(tiny_model, pc_result):
    """Centred, with PCs 0 and 1 of one head selected (orthonormal), the dot product of two
    images is ``a(x) · a(q)`` over those two coordinates: nothing else of the image counts."""
    from hookedclip.methods.neighbours import selection_space

    pool = torch.randn(30, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    pca = pc_result["L1H0"]
    space = selection_space(tiny_model, pc_result, [("L1H0", 0), ("L1H0", 1)], centre=True)
    coords = pca.coordinates(decompose_image(tiny_model, pool, components=["L1H0"]).tensor[0].double())[:, :2]
    query = 9
    found = nearest_images(tiny_model, pool[query], [pool[:13], pool[13:]], space, k=30, score="score")
    assert found.indices.tolist() == torch.argsort(coords @ coords[query], descending=True).tolist()
    torch.testing.assert_close(space(pool)[:, :].double(), coords @ pca.components[:2], rtol=1e-4, atol=1e-6)
    full = nearest_images(tiny_model, pool[query], [pool], embedding_space(tiny_model), k=30, score="score")
    assert full.indices.tolist() != found.indices.tolist()  # the restriction changes the ranking


def test_selection_space_checks_the_selection_and_the_model(tiny_model, pc_result):
    from tests.conftest import tiny_open_clip

    from hookedclip import HookedCLIP
    from hookedclip.methods.neighbours import selection_space

    k = pc_result["L1H0"].k
    with pytest.raises(IndexError, match=f"L1H0 has {k} retained PCs"):
        selection_space(tiny_model, pc_result, [("L1H0", k)])
    other = HookedCLIP.from_open_clip(tiny_open_clip(seed=9))
    with pytest.raises(ValueError, match="computed with .* but the model given is"):
        selection_space(other, pc_result, [("L1H0", 0)])


def test_pclens_nearest_neighbours_delegates_to_nearest():
    from hookedclip.methods.pclens.selection import nearest_neighbours

    gen = torch.Generator().manual_seed(2)
    x, q = torch.randn(20, 5, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64)
    for mine, theirs in (("dot", "score"), ("cos", "score_vis")):
        idx, vals = nearest_neighbours(q, x, k=7, score=mine)
        ref = nearest(q, [x], 7, theirs)
        assert idx.tolist() == ref.indices.tolist()
        torch.testing.assert_close(vals, ref.values)
    with pytest.raises(ValueError, match="score must be"):
        nearest_neighbours(q, x, score="l2")


def test_neighbour_grid_shows_rank_and_score(tmp_path):
    from PIL import Image

    from hookedclip.plotting import neighbour_grid

    rng = np.random.default_rng(0)
    query, found = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    path = neighbour_grid(
        query,
        found,
        [f"item {i}" for i in range(5)],
        tmp_path / "g.png",
        title="t",
        cols=5,
        scores=[0.9, 0.8, 0.7, 0.6, 0.5],
        score_name="cos",
    )
    import matplotlib.pyplot as plt

    fig_texts = []
    orig = plt.Axes.set_title

    def spy(self, label, *a, **kw):
        fig_texts.append(label)
        return orig(self, label, *a, **kw)

    plt.Axes.set_title = spy
    try:
        neighbour_grid(
            query,
            found,
            [f"item {i}" for i in range(5)],
            tmp_path / "h.png",
            cols=5,
            scores=[0.9, 0.8, 0.7, 0.6, 0.5],
            score_name="cos",
        )
    finally:
        plt.Axes.set_title = orig
    assert fig_texts[1].startswith("#1  cos 0.9\nitem 0") and fig_texts[5].startswith("#5  cos 0.5")
    width, height = Image.open(path).size
    assert width > 2 * height > 0  # one row of five beside the query
