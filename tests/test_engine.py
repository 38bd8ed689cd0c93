"""The intervention engine (``hookedclip.ablation.intervene``): one composition rule for every
edit of a component's output, ablations and PCLens contexts alike (``docs/engine.md``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import tiny_open_clip

from hookedclip import HookedCLIP, ablation
from hookedclip.decompose import decompose_image
from hookedclip.methods import pclens
from hookedclip.methods.pclens import PCLensResult
from hookedclip.names import act_name

SETTINGS = settings(deadline=None, max_examples=15, derandomize=True)
HEADS = [f"L{layer}H{head}" for layer in range(2) for head in range(4)]
EVERY = ["embed", "mlp0", "mlp1", *HEADS]
KINDS = ["mean", "project", "remove", "reweight"]
PCLENS_KINDS = {"remove", "reweight"}  # act on analysed heads only


class Setup:
    """A float64 tiny CLIP, images, direct-mode means, directions and a PCLens result on every head."""

    def __init__(self) -> None:
        self.model = HookedCLIP.from_open_clip(tiny_open_clip(seed=2)).double()
        gen = torch.Generator().manual_seed(2)
        fit_images = torch.randn(48, 3, 16, 16, generator=gen, dtype=torch.float64)
        self.images = torch.randn(4, 3, 16, 16, generator=gen, dtype=torch.float64)
        self.means = ablation.component_means(self.model, fit_images.split(16), mode="direct")
        self.directions = torch.randn(2, 16, generator=gen, dtype=torch.float64)
        pool = F.normalize(torch.randn(30, 16, generator=gen, dtype=torch.float64), dim=-1)
        self.result = pclens.fit(
            self.model,
            fit_images.split(16),
            components=["L0-1"],
            texts=[f"text {i}" for i in range(30)],
            text_embeddings=pool,
            n_texts=3,
        )
        self.weights = {
            label: torch.randn(p.k, generator=gen, dtype=torch.float64) for label, p in self.result.heads.items()
        }

    def restricted(self, heads) -> PCLensResult:
        """The PCLens result with only ``heads`` analysed (so ``remove`` touches only them)."""
        r = self.result
        return PCLensResult({h: r[h] for h in heads}, r.model, image_mean=r.image_mean, settings=r.settings)

    def context(self, kind: str, comps: list[str]):
        model = self.model
        if kind == "mean":
            return ablation.mean_ablate(model, comps, self.means, "direct")
        if kind == "project":
            return ablation.project_out(model, comps, self.directions, mode="direct")
        if kind == "remove":
            return pclens.remove(model, self.restricted(comps), [(h, 0) for h in comps])
        return pclens.reweight(model, self.result, {h: self.weights[h] for h in comps})

    def replaced(self, kind: str, label: str, row: torch.Tensor) -> torch.Tensor:
        """What ``kind`` makes of one decomposition row, written out independently."""
        if kind == "mean":
            return self.means[label].expand_as(row)
        if kind == "project":
            q = torch.linalg.qr(self.directions.T).Q
            return row - (row @ q) @ q.T
        pca = self.result[label]
        if kind == "remove":
            w = torch.ones(pca.k, dtype=torch.float64)
            w[0] = 0
            return pca.reconstruct(row, w)
        return pca.reconstruct(row, self.weights[label])


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup()


def _rows(model, images) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(e, label -> φ_c)`` of the forward as it runs now (whatever contexts are active)."""
    e = model.encode_image(images)
    stack = decompose_image(model, images)
    return e, dict(zip(stack.labels, stack.tensor))


def _expected(e: torch.Tensor, rows: dict, new: dict) -> torch.Tensor:
    """``e + ‖e‖ Σ_c (φ'_c − φ_c)``: the direct rule written out."""
    delta = sum(new[label] - rows[label] for label in new)
    return e + e.norm(dim=-1, keepdim=True) * delta


def _clean(model) -> bool:
    """No hook function, no module hook and no engine edit left anywhere."""
    return (
        all(not h.fwd_fns and not h.bwd_fns and not h._forward_hooks for h in model.hook_dict.values())
        and ablation.active(model) == []
    )


def _disjoint_edits(draw):
    """Two kinds of edit and two disjoint non-empty sets of components they can act on."""
    kinds = [draw(st.sampled_from(KINDS)) for _ in range(2)]
    first_pool = HEADS if kinds[0] in PCLENS_KINDS else EVERY
    first = sorted(draw(st.sets(st.sampled_from(first_pool), min_size=1, max_size=3)))
    second_pool = [c for c in (HEADS if kinds[1] in PCLENS_KINDS else EVERY) if c not in first]
    second = sorted(draw(st.sets(st.sampled_from(second_pool), min_size=1, max_size=3)))
    return kinds, (first, second)


# ---------------------------------------------------------------------------- composition rules
@SETTINGS
@given(data=st.data())
def test_disjoint_direct_edits_commute_and_equal_one_context(setup, data):
    """Any two direct edits (ablations or PCLens) on disjoint components: either nesting order,
    one engine context over both, and the rule written out from a decomposition all agree."""
    (kind_a, kind_b), (a, b) = _disjoint_edits(data.draw)
    model, images = setup.model, setup.images
    e, rows = _rows(model, images)
    kind_of = {**{c: kind_a for c in a}, **{c: kind_b for c in b}}
    expected = _expected(e, rows, {c: setup.replaced(k, c, rows[c]) for c, k in kind_of.items()})
    with setup.context(kind_a, a), setup.context(kind_b, b):
        a_then_b = model.encode_image(images)
    with setup.context(kind_b, b), setup.context(kind_a, a):
        b_then_a = model.encode_image(images)
    both = ablation.intervene(model, a + b, lambda row, c: setup.replaced(kind_of[str(c)], str(c), row), "direct")
    with both:
        one = model.encode_image(images)
    for got in (a_then_b, b_then_a, one):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    if kind_a == kind_b:  # one context of that kind over A ∪ B
        with setup.context(kind_a, sorted(a + b)):
            torch.testing.assert_close(model.encode_image(images), expected, rtol=0, atol=1e-12)
    assert (a_then_b - e).abs().max() > 1e-6  # the edits do something
    assert _clean(model)


@pytest.mark.parametrize("ablation_outside", [True, False])
def test_pclens_remove_and_direct_mean_ablation_commute(setup, ablation_outside):
    """The nesting bug: PCLens used to normalise by the ‖e‖ it was handed, which an outer
    direct ablation had already rewritten, so the result depended on the nesting order."""
    model, images = setup.model, setup.images
    heads, others = ["L1H0", "L1H2"], ["L0H1", "mlp0", "mlp1"]
    e, rows = _rows(model, images)
    new = {c: setup.replaced("remove", c, rows[c]) for c in heads} | {c: setup.means[c] for c in others}
    first = ablation.mean_ablate(model, others, setup.means, mode="direct")
    second = pclens.remove(model, setup.restricted(heads), [(h, 0) for h in heads])
    if not ablation_outside:
        first, second = second, first
    with first, second:
        got = model.encode_image(images)
    torch.testing.assert_close(got, _expected(e, rows, new), rtol=0, atol=1e-12)
    assert _clean(model)


def test_inner_replace_receives_the_outer_result(setup):
    """On a shared component the inner replace gets exactly what the outer one returned."""
    model, images = setup.model, setup.images
    e, rows = _rows(model, images)
    seen = []

    def double(row, comp):
        seen.append((str(comp), row.clone()))
        return 2 * row

    with (
        ablation.mean_ablate(model, ["L1H1"], setup.means, "direct"),
        ablation.intervene(model, ["L1H1"], double, "direct"),
    ):
        mean_then_double = model.encode_image(images)
    assert [label for label, _ in seen] == ["L1H1"]
    assert torch.equal(seen[0][1], setup.means["L1H1"].expand_as(rows["L1H1"]))
    torch.testing.assert_close(
        mean_then_double, _expected(e, rows, {"L1H1": 2 * setup.means["L1H1"]}), rtol=0, atol=1e-12
    )

    seen.clear()
    with (
        pclens.reweight(model, setup.result, {"L1H0": setup.weights["L1H0"]}),
        ablation.intervene(model, ["L1H0"], double, "direct"),
    ):
        model.encode_image(images)
    # rows computed for one head or for all agree to rounding, not bit for bit
    torch.testing.assert_close(
        seen[0][1], setup.result["L1H0"].reconstruct(rows["L1H0"], setup.weights["L1H0"]), rtol=0, atol=1e-15
    )

    with (
        ablation.intervene(model, ["L1H1"], double, "direct"),
        ablation.mean_ablate(model, ["L1H1"], setup.means, "direct"),
    ):
        double_then_mean = model.encode_image(images)  # the inner mean overrides
    torch.testing.assert_close(double_then_mean, _expected(e, rows, {"L1H1": setup.means["L1H1"]}), rtol=0, atol=1e-12)
    assert _clean(model)


@pytest.mark.parametrize("total_outside", [True, False])
@pytest.mark.parametrize("kind", ["mean", "remove"])
def test_total_and_direct_contexts_nest_in_either_order(setup, total_outside, kind):
    """A total edit changes the forward; the direct rows are read from that forward whichever
    context is entered first."""
    model, images = setup.model, setup.images
    with ablation.zero_ablate(model, ["L0H0", "mlp0"], mode="total"):
        e, rows = _rows(model, images)
    direct_comps = ["L1H1", "L1H3"]
    expected = _expected(e, rows, {c: setup.replaced(kind, c, rows[c]) for c in direct_comps})
    first = ablation.zero_ablate(model, ["L0H0", "mlp0"], mode="total")
    second = setup.context(kind, direct_comps)
    if not total_outside:
        first, second = second, first
    with first, second:
        torch.testing.assert_close(model.encode_image(images), expected, rtol=0, atol=1e-12)
    assert _clean(model)


@pytest.mark.parametrize("user_outside", [True, False])
def test_pclens_sees_plain_hook_edits_entered_inside_or_outside(setup, user_outside):
    """PCLens rows come from the activations the forward used: a ``model.hooks`` edit entered
    inside a PCLens context is decomposed too (it used to be missed)."""
    model, images = setup.model, setup.images

    def scale(x, hook):
        return 1.5 * x

    user = [(act_name("v", 1), scale), (act_name("z", 0), scale)]
    with model.hooks(fwd_hooks=user):
        e, rows = _rows(model, images)
    heads = ["L1H0", "L1H1"]
    expected = _expected(e, rows, {c: setup.replaced("reweight", c, rows[c]) for c in heads})
    first, second = model.hooks(fwd_hooks=user), setup.context("reweight", heads)
    if not user_outside:
        first, second = second, first
    with first, second:
        torch.testing.assert_close(model.encode_image(images), expected, rtol=0, atol=1e-12)
    assert _clean(model)


def test_mean_ablate_all_finalize_runs_after_every_replacement(setup):
    """``keep(..., mean_ablate_all=True)`` sets everything outside the analysed heads to its
    mean, so a direct ablation of a non-analysed component changes nothing, in either order:
    finalizes run after all replacements."""
    model, images = setup.model, setup.images
    keep = lambda: pclens.keep(model, setup.result, [("L1H0", 0)], mean_ablate_all=True)  # noqa: E731
    mlp = lambda: ablation.mean_ablate(model, ["mlp0"], setup.means, "direct")  # noqa: E731
    with keep():
        alone = model.encode_image(images)
    for first, second in ((keep, mlp), (mlp, keep)):
        with first(), second():
            torch.testing.assert_close(model.encode_image(images), alone, rtol=0, atol=1e-12)
    assert _clean(model)


# ---------------------------------------------------------------------------- hooks, caches, undo
def test_engine_contexts_nest_with_hooks_and_cache(setup):
    """A cache inside a direct context sees the rewritten embedding; one outside sees
    ``hook_out`` before the rewrite (hook order) but every total edit upstream of it."""
    model, images = setup.model, setup.images
    clean = model.encode_image(images)
    resid = act_name("resid_pre", 1)
    with model.cache([act_name("out"), resid]) as outer:
        with ablation.zero_ablate(model, ["L0H2"], "total"):
            with ablation.mean_ablate(model, ["L1H1"], setup.means, "direct"):
                with model.cache([act_name("out")]) as inner:
                    got = model.encode_image(images)
    _, untouched = model.run_with_cache(images, names_filter=resid)
    torch.testing.assert_close(inner["visual.hook_out"], got, rtol=0, atol=0)
    with ablation.zero_ablate(model, ["L0H2"], "total"):
        before_rewrite = model.encode_image(images)
        _, edited = model.run_with_cache(images, names_filter=resid)
    # (the direct context's hooks make attention take its unfused path: equal to rounding)
    torch.testing.assert_close(outer["visual.hook_out"], before_rewrite, rtol=0, atol=1e-12)
    torch.testing.assert_close(outer[resid], edited[resid], rtol=0, atol=1e-12)
    assert (outer[resid] - untouched[resid]).abs().max() > 1e-6
    assert (got - before_rewrite).abs().max() > 1e-6 and (before_rewrite - clean).abs().max() > 1e-6
    assert _clean(model)


def test_everything_is_undone_when_the_body_raises(setup):
    model, images = setup.model, setup.images
    clean = model.encode_image(images)
    with pytest.raises(RuntimeError, match="boom"):
        with (
            ablation.zero_ablate(model, ["L0H0"], "total"),
            pclens.remove(model, setup.restricted(["L1H0"]), [("L1H0", 0)]),
            model.hooks(fwd_hooks=[(act_name("z", 1), lambda x, hook: 2 * x)]),
            ablation.mean_ablate(model, ["mlp1"], setup.means, "direct"),
            ablation.intervene_at(model, act_name("resid_post", 0), lambda x, site: 0.5 * x),
            model.cache(),
        ):
            assert len(ablation.active(model)) == 4
            model.encode_image(images)
            raise RuntimeError("boom")
    assert _clean(model)
    torch.testing.assert_close(model.encode_image(images), clean, rtol=0, atol=0)


def test_active_lists_the_edits_outermost_first(setup):
    model = setup.model
    site = act_name("resid_post", 0)
    with (
        ablation.zero_ablate(model, ["L0H0"], "total"),
        pclens.keep(model, setup.result, [("L1H0", 0)]),
        ablation.intervene_at(model, site, lambda x, s: x),
    ):
        edits = ablation.active(model)
        assert [(e.mode, e.site) for e in edits] == [("total", None), ("direct", None), ("total", site)]
        assert str(edits[0]) == "total replace on L0H0"
        assert str(edits[2]) == f"total replace on {site}"
        assert len(edits[1].components) == len(setup.result.heads)
    assert ablation.active(model) == []


# ---------------------------------------------------------------------------- the extension point
def test_custom_replace_and_finalize_behave_as_documented(setup):
    """``finalize(unit, rows, new_rows)`` gets ``ê + Σ_c (φ'_c − φ_c)`` (float64, normalised by the
    clean ‖e‖), this context's rows before and after every replacement, by label; the output is
    ``‖e‖ · finalize(...)``."""
    model, images = setup.model, setup.images
    e, rows = _rows(model, images)
    norm = e.norm(dim=-1, keepdim=True)
    calls = []

    def finalize(unit, before, after):
        calls.append((unit.clone(), before, after))
        return unit / unit.norm(dim=-1, keepdim=True)  # keep the clean norm

    with (
        ablation.intervene(model, ["L1H2", "mlp1"], lambda row, c: 3 * row, "direct", finalize=finalize),
        ablation.mean_ablate(model, ["mlp1"], setup.means, "direct"),
    ):
        got = model.encode_image(images)
    new = {"L1H2": 3 * rows["L1H2"], "mlp1": setup.means["mlp1"].expand_as(rows["mlp1"])}
    unit, before, after = calls[0]
    assert unit.dtype == torch.float64 and set(before) == set(after) == {"L1H2", "mlp1"}
    torch.testing.assert_close(unit, _expected(e, rows, new) / norm, rtol=0, atol=1e-12)
    for label in new:
        torch.testing.assert_close(before[label], rows[label], rtol=0, atol=1e-12)
        torch.testing.assert_close(after[label], new[label], rtol=0, atol=1e-12)
    torch.testing.assert_close(got, norm * F.normalize(unit, dim=-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(got.norm(dim=-1), e.norm(dim=-1), rtol=0, atol=1e-12)


def test_finalizes_compose_outer_first(setup):
    model, images = setup.model, setup.images
    e = model.encode_image(images)
    shift = torch.randn(16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    add = ablation.intervene(model, [], mode="direct", finalize=lambda u, r, n: u + shift)
    double = ablation.intervene(model, [], mode="direct", finalize=lambda u, r, n: 2 * u)
    with add, double:
        got = model.encode_image(images)
    norm = e.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(got, norm * 2 * (e / norm + shift), rtol=0, atol=1e-12)


def rescale_rows(model, components, gain: float):
    """The worked example of ``docs/engine.md``: multiply each component's direct contribution by
    ``gain`` and keep the embedding's clean norm."""

    def replace(row, component):
        return gain * row

    def finalize(unit, rows, new_rows):
        return unit / unit.norm(dim=-1, keepdim=True)

    return ablation.intervene(model, components, replace, mode="direct", finalize=finalize)


@SETTINGS
@given(comps=st.sets(st.sampled_from(EVERY), min_size=1, max_size=4), gain=st.floats(-2, 3))
def test_the_documented_example_context(setup, comps, gain):
    model, images = setup.model, setup.images
    e, rows = _rows(model, images)
    comps = sorted(comps)
    with rescale_rows(model, comps, gain):
        got = model.encode_image(images)
    direction = F.normalize(e, dim=-1) + (gain - 1) * sum(rows[c] for c in comps)
    torch.testing.assert_close(got, e.norm(dim=-1, keepdim=True) * F.normalize(direction, dim=-1), rtol=0, atol=1e-12)


def test_a_site_replacement_nests_like_total_edits(setup):
    """``intervene_at`` (an SAE-like low-rank splice into the residual stream) equals the same
    function as a plain hook, two of them at one site run outer first, and direct rows
    downstream are read from the spliced forward."""
    model, images = setup.model, setup.images
    site = act_name("resid_post", 0)
    basis = torch.linalg.qr(torch.randn(32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))).Q

    def splice(x, where):
        assert where == site
        return (x @ basis) @ basis.T

    with model.hooks(fwd_hooks=[(site, lambda x, hook: splice(x, hook.name))]):
        e, rows = _rows(model, images)
    with ablation.intervene_at(model, site, splice):
        torch.testing.assert_close(model.encode_image(images), e, rtol=0, atol=0)
    with ablation.intervene_at(model, site, splice), ablation.intervene_at(model, site, lambda x, s: x + 1):
        shifted = model.encode_image(images)
    with model.hooks(fwd_hooks=[(site, lambda x, hook: splice(x, site) + 1)]):
        torch.testing.assert_close(shifted, model.encode_image(images), rtol=0, atol=0)
    expected = _expected(e, rows, {"L1H1": setup.means["L1H1"]})
    for order in (0, 1):
        pair = [
            ablation.intervene_at(model, site, splice),
            ablation.mean_ablate(model, ["L1H1"], setup.means, "direct"),
        ]
        with pair[order], pair[1 - order]:
            torch.testing.assert_close(model.encode_image(images), expected, rtol=0, atol=1e-12)
    assert _clean(model)


def test_bad_extension_input_gives_clear_errors(setup):
    model, images = setup.model, setup.images
    with pytest.raises(ValueError, match="finalize acts on the embedding's direct path: use mode='direct'"):
        ablation.intervene(model, ["L0H0"], lambda x, c: x, "total", finalize=lambda u, r, n: u)
    with pytest.raises(TypeError, match="needs a replace function"):
        ablation.intervene(model, ["L0H0"], mode="total")
    with pytest.raises(ValueError, match="head_space must be 'z' or 'result'"):
        ablation.intervene(model, ["L0H0"], lambda x, c: x, head_space="q")
    with pytest.raises(KeyError, match="unknown hook point .*resid_post"):
        ablation.intervene_at(model, "visual.blocks.0.hook_resid_postt", lambda x, s: x)
    with ablation.intervene(model, ["L0H0"], lambda x, c: x[:, :3], "direct"):
        with pytest.raises(ValueError, match=r"replace for L0H0 returned shape \(4, 3\); direct mode needs \(4, 16\)"):
            model.encode_image(images)
    with ablation.intervene(model, [], mode="direct", finalize=lambda u, r, n: None):
        with pytest.raises(TypeError, match="finalize returned NoneType"):
            model.encode_image(images)
    assert _clean(model)


def test_ablate_is_a_deprecated_alias_of_intervene(setup):
    model, images = setup.model, setup.images
    with pytest.deprecated_call(match="ablation.intervene"):
        old = ablation.ablate(model, ["L0H0"], lambda x, c: torch.zeros_like(x))
    with old:
        got = model.encode_image(images)
    with ablation.zero_ablate(model, ["L0H0"]):
        torch.testing.assert_close(got, model.encode_image(images), rtol=0, atol=0)
