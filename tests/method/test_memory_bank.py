"""Memory banks: exact nearest-neighbour distances in blocks, leave-one-out, k-centre coresets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tipsomaly.method.memory_bank import (
    DEFAULT_CHUNK,
    MemoryBank,
    ReferenceBank,
    ReferenceDistances,
    greedy_coreset,
)
from tipsomaly.tips.vision import VisionFeatures


def brute_force(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """1 − max cosine through the full distance matrix: for unit vectors ‖a−b‖² = 2 − 2cos."""
    q = F.normalize(queries.reshape(-1, queries.shape[-1]).double(), dim=-1)
    b = F.normalize(bank.double(), dim=-1)
    d = torch.cdist(q, b).min(dim=1).values
    return (d * d / 2).reshape(queries.shape[:-1])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# chunk → blocks: m_cols = chunk // 1024 bank entries, q_rows = chunk // m_cols queries
@pytest.mark.parametrize(
    "m,q,chunk",
    [
        (50, 3100, 3000),  # 2 entries × 1500 queries a block: 25 × 3 blocks
        (257, 2100, 7 * 1024 + 5),  # 7 × 1024: 37 × 3 blocks, ragged on both sides
        (300, 10, 1),  # a block of one entry and one query
        (300, 10, DEFAULT_CHUNK),  # one block
        (1, 33, 1024),
    ],
    ids=["many-both", "ragged", "one-by-one", "default", "single-entry"],
)
def test_distances_equal_brute_force(m, q, chunk):
    g = _gen(m + q)
    features = torch.randn(m, 24, generator=g) * 3.0  # not normalised: the bank does it
    queries = torch.randn(q, 24, generator=g)
    bank = MemoryBank(features, chunk=chunk)
    got = bank(queries)
    assert got.shape == (q,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), brute_force(queries, features), atol=2e-6, rtol=0)
    assert float(got.min()) >= 0.0 and float(got.max()) <= 2.0


def test_a_query_in_the_bank_is_at_distance_zero_and_shapes_are_kept():
    g = _gen(1)
    features = torch.randn(40, 16, generator=g)
    bank = MemoryBank(features, chunk=2048)
    queries = torch.cat([features[:6], torch.randn(6, 16, generator=g)]).reshape(3, 4, 16)
    got = bank(queries)
    assert got.shape == (3, 4)
    torch.testing.assert_close(got.reshape(-1)[:6], torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(got.double(), brute_force(queries, features), atol=2e-6, rtol=0)
    assert torch.allclose(bank.features.norm(dim=1), torch.ones(40))
    assert len(bank) == 40 and bank.dim == 16


@pytest.mark.parametrize("chunk", [3000, DEFAULT_CHUNK])
def test_leave_one_out_equals_a_bank_without_that_source(chunk):
    g = _gen(2)
    m, d, n_sources = 120, 20, 7
    features = torch.randn(m, d, generator=g)
    sources = torch.randint(n_sources, (m,), generator=g)
    bank = MemoryBank(features, sources, chunk=chunk)  # 3000: 60 × 2 blocks
    queries = torch.randn(2000, d, generator=g)
    exclude = torch.randint(n_sources, (2000,), generator=g)
    got = bank(queries, exclude)
    for s in range(n_sources):
        rows = exclude == s
        without = MemoryBank(features[sources != s])
        torch.testing.assert_close(got[rows], without(queries[rows]), atol=1e-6, rtol=0)
    # a source absent from the bank leaves everything in
    torch.testing.assert_close(bank(queries, torch.full((2000,), 99)), bank(queries))
    # leading shapes: exclude has the queries' shape
    got2 = bank(queries.reshape(20, 100, d), exclude.reshape(20, 100))
    torch.testing.assert_close(got2.reshape(-1), got)


def test_a_query_with_nothing_left_gets_distance_two():
    bank = MemoryBank(torch.randn(5, 8), torch.zeros(5, dtype=torch.long))
    assert bank(torch.randn(3, 8), torch.zeros(3, dtype=torch.long)).tolist() == [2.0] * 3


def test_normalized_features_are_kept_bit_identical():
    unit = F.normalize(torch.randn(50, 32, generator=_gen(9)), dim=-1)
    assert torch.equal(MemoryBank(unit, normalized=True).features, unit)
    queries = torch.randn(20, 32, generator=_gen(10))
    torch.testing.assert_close(
        MemoryBank(unit, normalized=True)(queries), MemoryBank(unit)(queries), atol=1e-6, rtol=0
    )


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="M >= 1"):
        MemoryBank(torch.randn(0, 8))
    with pytest.raises(ValueError, match=r"\(M, D\)"):
        MemoryBank(torch.randn(8))
    with pytest.raises(ValueError, match="sources"):
        MemoryBank(torch.randn(5, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="dims"):
        MemoryBank(torch.randn(5, 8))(torch.randn(2, 7))


# ----------------------------------------------------------------------------------- coreset


def _covering_radius(x: torch.Tensor, chosen: torch.Tensor) -> float:
    return float(torch.cdist(x.double(), x[chosen].double()).min(dim=1).values.max())


@pytest.mark.parametrize("size", [1, 2, 17, 100, 299])
def test_coreset_returns_size_distinct_indices(size):
    x = torch.randn(300, 32, generator=_gen(size))
    idx = greedy_coreset(x, size)
    assert idx.dtype == torch.long and idx.shape == (size,)
    assert len(set(idx.tolist())) == size
    assert 0 <= int(idx.min()) and int(idx.max()) < 300


@pytest.mark.parametrize("size", [300, 301, 10_000])
def test_coreset_of_at_least_the_bank_is_all_of_it(size):
    x = torch.randn(300, 8)
    assert torch.equal(greedy_coreset(x, size), torch.arange(300))


def test_coreset_refuses_an_empty_size():
    with pytest.raises(ValueError, match=">= 1"):
        greedy_coreset(torch.randn(10, 4), 0)


def test_coreset_is_deterministic_per_seed():
    x = torch.randn(2000, 256, generator=_gen(3))  # 256 > 128: projected
    a, b = greedy_coreset(x, 50, seed=4), greedy_coreset(x, 50, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, greedy_coreset(x, 50, seed=5))


@pytest.mark.parametrize("d", [3, 64, 128])
def test_coreset_keeps_the_k_centre_invariant(d):
    """Without projection (d <= 128) the distances are exact: each chosen point is the one
    farthest from those before it, so the selection radii never grow, every point lies within
    the last one of the coreset, and the chosen points are at least that far apart (the reason
    the radius is at most twice the optimum)."""
    x = torch.randn(1500, d, generator=_gen(d)) * torch.linspace(0.2, 3.0, d)
    size = 60
    idx = greedy_coreset(x, size, seed=d)
    xd = x.double()
    dist = torch.cdist(xd, xd)
    nearest = dist[idx[0]].clone()
    radii = []
    for i in idx[1:].tolist():
        radii.append(float(nearest[i]))
        assert float(nearest[i]) == pytest.approx(float(nearest.max()), rel=1e-4, abs=1e-6)
        nearest = torch.minimum(nearest, dist[i])
    radii_t = torch.tensor(radii)
    assert bool((radii_t[1:] <= radii_t[:-1] * (1 + 1e-4) + 1e-6).all())
    assert _covering_radius(x, idx) <= radii[-1] * (1 + 1e-4) + 1e-6
    pairwise = dist[idx][:, idx] + torch.eye(size, dtype=torch.double) * 1e9
    assert float(pairwise.min()) >= radii[-1] * (1 - 1e-4) - 1e-6


def test_coreset_covers_clustered_data_much_better_than_a_random_subset():
    """One big cluster and 19 small ones far apart: k-centre takes a point of each, a random
    subset of the same size almost surely misses some (and its radius is the cluster gap)."""
    g = _gen(6)
    centres = torch.randn(20, 256, generator=g) * 10.0
    counts = [2000] + [5] * 19
    x = torch.cat(
        [c + 0.1 * torch.randn(k, 256, generator=g) for c, k in zip(centres, counts, strict=True)]
    )
    idx = greedy_coreset(x, 20, seed=0)  # projected to 128 dims
    label = torch.repeat_interleave(torch.arange(20), torch.tensor(counts))
    assert set(label[idx].tolist()) == set(range(20))
    ours = _covering_radius(x, idx)
    random_radii = [
        _covering_radius(x, torch.randperm(len(x), generator=_gen(s))[:20]) for s in range(5)
    ]
    assert ours < 0.2 * min(random_radii), (ours, random_radii)


def test_coreset_indices_are_distinct_when_rows_repeat():
    """A bank with fewer distinct rows than ``size`` (repeated patches): once every row is
    within rounding of a chosen one, a chosen row must not be picked again (it was, before
    chosen rows were taken out of the argmax: [54, 2, 1, 2, 2, 2] here)."""
    x = F.normalize(torch.randn(3, 768, generator=_gen(7)), dim=-1).repeat(40, 1)
    idx = greedy_coreset(x, 6, seed=1)
    assert len(set(idx.tolist())) == 6, idx.tolist()
    assert _covering_radius(x, idx) < 1e-3


# ----------------------------------------------------------------------------- reference bank


def test_reference_bank_shapes_and_values():
    g = _gen(8)
    n_refs, n_patch, d, b = 4, 9, 16, 3
    patches = torch.randn(n_refs * n_patch, d, generator=g)
    patch_sources = torch.arange(n_refs).repeat_interleave(n_patch)
    cls1, cls2 = torch.randn(n_refs, d, generator=g), torch.randn(n_refs, d, generator=g)
    ref = ReferenceBank(
        MemoryBank(patches, patch_sources, chunk=2048),
        MemoryBank(cls1, torch.arange(n_refs)),
        MemoryBank(cls2, torch.arange(n_refs)),
    )
    assert ref.dim == d and ref.n_references == n_refs
    feats = VisionFeatures(
        torch.randn(b, 1, d, generator=g),
        torch.randn(b, 1, d, generator=g),
        torch.randn(b, n_patch, d, generator=g),
    )
    out = ref(feats)
    assert isinstance(out, ReferenceDistances)
    assert out.cls1.shape == (b,) and out.cls2.shape == (b,) and out.patches.shape == (b, n_patch)
    torch.testing.assert_close(
        out.cls1.double(), brute_force(feats.cls1[:, 0], cls1), atol=2e-6, rtol=0
    )
    torch.testing.assert_close(
        out.cls2.double(), brute_force(feats.cls2[:, 0], cls2), atol=2e-6, rtol=0
    )
    torch.testing.assert_close(
        out.patches.double(), brute_force(feats.patches, patches), atol=2e-6, rtol=0
    )

    # leave-one-out: image i without reference exclude[i], for every token kind
    exclude = torch.tensor([0, 2, 3])
    loo = ref(feats, exclude)
    assert loo.patches.shape == (b, n_patch)
    for i, e in enumerate(exclude.tolist()):
        keep = patch_sources != e
        others = torch.arange(n_refs) != e
        torch.testing.assert_close(
            loo.patches[i].double(), brute_force(feats.patches[i], patches[keep]), atol=2e-6, rtol=0
        )
        torch.testing.assert_close(
            loo.cls1[i].double(), brute_force(feats.cls1[i, 0], cls1[others]), atol=2e-6, rtol=0
        )
        torch.testing.assert_close(
            loo.cls2[i].double(), brute_force(feats.cls2[i, 0], cls2[others]), atol=2e-6, rtol=0
        )
    # a reference scored against a bank without it is farther than against the whole bank
    own = VisionFeatures(cls1[:, None], cls2[:, None], patches.reshape(n_refs, n_patch, d))
    assert torch.allclose(ref(own).patches, torch.zeros(n_refs, n_patch), atol=1e-6)
    assert bool((ref(own, torch.arange(n_refs)).patches > 1e-3).all())


def test_reference_bank_refuses_mixed_widths():
    with pytest.raises(ValueError, match="widths differ"):
        ReferenceBank(
            MemoryBank(torch.randn(4, 8)),
            MemoryBank(torch.randn(2, 8)),
            MemoryBank(torch.randn(2, 6)),
        )
