"""8-connected labelling of binary masks with a vectorised union-find in numpy (no scipy needed)."""

from __future__ import annotations

import numpy as np

from ._arrays import as_numpy, binary_chunk, row_chunks


def foreground_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 8-connected components of each image of a boolean stack.

    The work is proportional to the number of foreground pixels (plus one fill of an index
    array of the stack's size).

    Args:
        mask: ``(N, H, W)`` bool array; components never cross from one image to another.

    Returns:
        ``(component, count)``: ``component`` is an ``(n_foreground,)`` int64 array giving, for
        every foreground pixel in C (scan) order — the order of ``values[mask]`` — its component
        index in ``[0, count)``; components are numbered by their first pixel in scan order.
    """
    if mask.ndim != 3 or mask.dtype != bool:
        raise ValueError(f"expected an (N, H, W) bool array, got {mask.dtype} {mask.shape}")
    _, height, width = mask.shape
    fg = np.flatnonzero(mask)
    n_fg = fg.size
    if n_fg == 0:
        return np.empty(0, dtype=np.int64), 0

    # node[p] = index of foreground pixel p among the foreground pixels, -1 on the background.
    node = np.full(mask.size, -1, dtype=np.int32 if mask.size < 2**31 else np.int64)
    node[fg] = np.arange(n_fg)
    col = fg % width
    not_last_row = (fg // width) % height < height - 1

    # Start from horizontal runs: every pixel points to the first pixel of its run, which is a root.
    previous = np.empty_like(fg)
    previous[0] = -2
    previous[1:] = fg[:-1]
    run_start = (col == 0) | (previous != fg - 1)
    parent = np.maximum.accumulate(np.where(run_start, np.arange(n_fg), 0))
    del previous, run_start

    # Edges to the next row: straight down, down-left and down-right (8-connectivity).
    src_parts, dst_parts = [], []
    for dx, valid in (
        (0, not_last_row),
        (-1, not_last_row & (col > 0)),
        (1, not_last_row & (col < width - 1)),
    ):
        src = np.flatnonzero(valid)
        dst = node[fg[src] + width + dx]
        hit = dst >= 0
        src_parts.append(src[hit])
        dst_parts.append(dst[hit].astype(np.int64))
    del node, col, not_last_row, src, dst, hit, valid
    pairs = [np.concatenate(src_parts), np.concatenate(dst_parts)]
    del src_parts, dst_parts
    parent = join(parent, pairs)
    is_root = parent == np.arange(n_fg)
    root_index = np.cumsum(is_root) - 1
    return root_index[parent], int(root_index[-1] + 1)


def join(parent: np.ndarray, pairs: list[np.ndarray]) -> np.ndarray:
    """Union-find rounds over the pairs of nodes ``pairs`` = [a, b]: ``parent`` (each node's
    root, a root its own; every pointer to a smaller index) after joining them. Each round
    hooks the larger root of every pair joining two trees onto the smaller root, then
    compresses all paths; pointers only ever decrease, so no cycle can form. ``pairs`` is
    emptied: the caller holds no reference, so the arrays are freed as the rounds shrink them."""
    a, b = pairs
    pairs.clear()
    while a.size:
        ra, rb = parent[a], parent[b]
        cross = ra != rb
        if not cross.any():
            break
        a, b, ra, rb = a[cross], b[cross], ra[cross], rb[cross]
        parent[np.maximum(ra, rb)] = np.minimum(ra, rb)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def label_regions(masks: object) -> tuple[np.ndarray, int]:
    """Label the 8-connected regions of binary masks (same partition as ``skimage.measure.label``).

    Args:
        masks: ``(H, W)`` or ``(N, H, W)`` binary array (bool or 0/1), or a torch tensor.

    Returns:
        ``(labels, count)``: ``labels`` is an int32 array of the input's shape with 0 for the
        background and ``1..count`` for the regions, numbered across all images in scan order.
    """
    arr = as_numpy(masks, "masks")
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"masks must have shape (H, W) or (N, H, W), got {arr.shape}")
    out = np.zeros(arr.shape, dtype=np.int32)
    total = 0
    for rows in row_chunks(arr.shape[0], arr[0].size):
        mask = binary_chunk(arr[rows], "masks")
        component, count = foreground_components(mask)
        out[rows][mask] = component + 1 + total
        total += count
    return (out[0] if squeeze else out), total
