"""Memory banks of normal features: exact nearest-neighbour distances, and a k-centre coreset.

A :class:`MemoryBank` holds L2-normalised features of normal images (PatchCore's memory bank,
AnomalyDINO's reference patches) with the index of the reference image each came from, so a
reference can be left out of its own search (leave-one-out calibration). A
:class:`ReferenceBank` groups the three banks a few-shot profile needs: patch tokens, and each
image's two CLS tokens. :func:`greedy_coreset` picks a subset that covers the whole bank
(PatchCore's greedy k-centre), used when a bank grows past its size limit.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..tips.vision import VisionFeatures

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_CHUNK", "MemoryBank", "ReferenceBank", "ReferenceDistances", "greedy_coreset"]

#: similarities computed at a time (queries × bank entries): 2**24 floats = 64 MiB
DEFAULT_CHUNK = 1 << 24


class MemoryBank(nn.Module):
    """(M, D) L2-normalised features, with ``sources`` (M,): the reference each came from.

    ``normalized=True`` takes ``features`` as already unit-length (a bank read from disk).
    ``forward(queries)`` gives each query's cosine distance to its nearest bank entry,
    ``1 − max_j cos(q, b_j)`` in [0, 2], exact. The similarities are computed in blocks of at
    most ``chunk`` floats (queries × entries), so memory stays bounded for any bank size.
    """

    features: torch.Tensor
    sources: torch.Tensor

    def __init__(
        self,
        features: torch.Tensor,
        sources: torch.Tensor | None = None,
        *,
        chunk: int = DEFAULT_CHUNK,
        normalized: bool = False,
    ) -> None:
        super().__init__()
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(
                f"a memory bank needs (M, D) features with M >= 1, got {tuple(features.shape)}"
            )
        if sources is None:
            sources = torch.zeros(features.shape[0], dtype=torch.long)
        if tuple(sources.shape) != (features.shape[0],):
            raise ValueError(f"sources must be ({features.shape[0]},), got {tuple(sources.shape)}")
        # normalising twice can move values by an ulp: a bank read back stays bit-identical
        unit = features.float() if normalized else F.normalize(features.float(), dim=-1)
        self.register_buffer("features", unit.contiguous())
        self.register_buffer("sources", sources.to(device=features.device, dtype=torch.long))
        self.chunk = int(chunk)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def forward(self, queries: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """(..., D) queries → (...) distance to the nearest entry, ``1 − max cosine``.

        ``exclude`` (same leading shape as ``queries``, integer): for each query, a source
        index whose entries it may not match (leave-one-out); a query with no entry left gets
        distance 2 (as far as a unit vector can be), which callers should avoid.

        The queries of one image (the last leading dimension: an image's patches, or one CLS
        token) are searched on their own, so an image's distances do not depend on the other
        images of its batch: a matrix product's last bits depend on its shape, and a service
        batches whatever requests arrive together.
        """
        if queries.shape[-1] != self.dim:
            raise ValueError(f"queries have {queries.shape[-1]} dims, the bank {self.dim}")
        lead = queries.shape[:-1]
        per_image = int(lead[-1]) if len(lead) >= 2 else 1
        q = F.normalize(queries.reshape(-1, self.dim).float(), dim=-1)
        ex = None if exclude is None else exclude.reshape(-1).to(q.device, torch.long)
        best = torch.full((q.shape[0],), -1.0, device=q.device)
        m = len(self)
        # blocks of q_rows × m_cols ≤ chunk floats, with at least ~1000 query rows a block
        m_cols = min(m, max(1, self.chunk // 1024))
        q_rows = min(per_image, max(1, self.chunk // m_cols))
        for image in range(0, q.shape[0], per_image):
            for i in range(image, image + per_image, q_rows):
                rows = slice(i, min(i + q_rows, image + per_image))
                running = best[rows]
                for j in range(0, m, m_cols):
                    sims = q[rows] @ self.features[j : j + m_cols].T
                    if ex is not None:
                        same = ex[rows, None] == self.sources[None, j : j + m_cols]
                        sims = sims.masked_fill(same, -1.0)
                    running = torch.maximum(running, sims.amax(dim=1))
                best[rows] = running
        return (1.0 - best.clamp(-1.0, 1.0)).reshape(lead)


class ReferenceDistances(NamedTuple):
    """Few-shot evidence for B images: cosine distances to the nearest reference.

    ``cls1``, ``cls2`` (B,): each CLS token to the references' same CLS tokens; ``patches``
    (B, N): each patch token to the nearest reference patch. All ``1 − cos`` in [0, 2].
    """

    cls1: torch.Tensor
    cls2: torch.Tensor
    patches: torch.Tensor


class ReferenceBank(nn.Module):
    """The references of one class: a patch bank and a bank of each CLS token.

    Entries carry their reference's index (``sources``) so :meth:`forward` can leave a
    reference out of its own search.
    """

    def __init__(self, patches: MemoryBank, cls1: MemoryBank, cls2: MemoryBank) -> None:
        super().__init__()
        if not patches.dim == cls1.dim == cls2.dim:
            raise ValueError(
                f"bank widths differ: patches {patches.dim}, cls1 {cls1.dim}, cls2 {cls2.dim}"
            )
        self.patches = patches
        self.cls1 = cls1
        self.cls2 = cls2

    @property
    def dim(self) -> int:
        return self.patches.dim

    @property
    def n_references(self) -> int:
        """How many reference images (distinct sources) the CLS banks hold."""
        return int(torch.unique(self.cls1.sources).numel())

    def forward(
        self, features: VisionFeatures, exclude: torch.Tensor | None = None
    ) -> ReferenceDistances:
        """Vision features of B images → :class:`ReferenceDistances`.

        ``exclude`` (B,): per image, a reference index to leave out (calibration on the
        references themselves), or None.
        """
        n = features.patches.shape[1]
        ex_patches = None if exclude is None else exclude[:, None].expand(-1, n)
        return ReferenceDistances(
            cls1=self.cls1(features.cls1[:, 0], exclude),
            cls2=self.cls2(features.cls2[:, 0], exclude),
            patches=self.patches(features.patches, ex_patches),
        )


def greedy_coreset(
    features: torch.Tensor, size: int, *, projection_dim: int = 128, seed: int = 0
) -> torch.Tensor:
    """Indices of ``size`` rows of (M, D) ``features`` chosen by greedy k-centre (PatchCore).

    Starting from a random row, each step adds the row farthest from those chosen so far, so
    every row ends up close to a chosen one (the largest such distance is at most twice the
    optimum). Distances are Euclidean on a random projection to ``projection_dim`` dimensions
    (Johnson–Lindenstrauss, as PatchCore does), seeded by ``seed``. Cost: ``size`` passes over
    the M projected rows. Returns all indices when ``size >= M``.
    """
    m, d = features.shape
    if size >= m:
        return torch.arange(m, device=features.device)
    if size < 1:
        raise ValueError(f"coreset size must be >= 1, got {size}")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    x = features.float()
    if d > projection_dim:
        proj = torch.randn(d, projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = x @ proj.to(x.device)
    norms = (x * x).sum(dim=1)
    start = int(torch.randint(m, (1,), generator=gen))
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = start
    nearest = (norms - 2.0 * (x @ x[start]) + norms[start]).clamp_min_(0.0)
    nearest[start] = -math.inf  # chosen rows are never chosen again (repeated rows are)
    for k in range(1, size):
        i = int(torch.argmax(nearest))
        chosen[k] = i
        torch.minimum(nearest, (norms - 2.0 * (x @ x[i]) + norms[i]).clamp_min_(0.0), out=nearest)
        nearest[i] = -math.inf
    logger.debug("coreset: %d of %d rows", size, m)
    return chosen.to(features.device)
