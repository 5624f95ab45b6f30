"""Defect records against hand-made maps: count, boxes, areas, peaks, centroids, RLE."""

from __future__ import annotations

import numpy as np
import pytest

from tipsomaly.method.defects import DefectRecord, extract_defects, rle_decode, rle_encode


def _hand_made() -> tuple[np.ndarray, list[dict]]:
    """A 40x60 map with four regions above 0.5 and what each must give."""
    m = np.full((40, 60), 0.1, dtype=np.float32)
    m[5:10, 10:20] = 0.8  # a 5x10 rectangle
    m[7, 12] = 0.95  # its peak
    m[20:30, 5:7] = 0.6  # an L: a 10x2 bar ...
    m[28:30, 7:15] = 0.6  # ... and a 2x8 foot: 20 + 16 = 36 pixels
    # two pixels touching only by a corner: one region under 8-connectivity
    m[33, 40] = 0.7
    m[34, 41] = 0.75
    m[2, 58] = 0.55  # a one-pixel speck
    expected = [
        {"bbox": (10, 5, 20, 10), "area": 50, "peak": 0.95},
        {"bbox": (40, 33, 42, 35), "area": 2, "peak": 0.75},
        {"bbox": (5, 20, 15, 30), "area": 36, "peak": 0.6},
        {"bbox": (58, 2, 59, 3), "area": 1, "peak": 0.55},
    ]
    return m, expected


def test_hand_made_regions_exactly():
    m, expected = _hand_made()
    records = extract_defects(m, 0.5)
    assert len(records) == 4
    assert [r.id for r in records] == [1, 2, 3, 4]  # by decreasing peak
    for record, want in zip(records, expected, strict=True):
        assert record.bbox == want["bbox"]
        assert record.area_px == want["area"]
        assert record.peak == pytest.approx(want["peak"])
        x0, y0, x1, y1 = record.bbox
        inside = m[y0:y1, x0:x1]
        region = inside >= 0.5
        assert record.mean == pytest.approx(float(inside[region].mean()), rel=1e-6)
        ys, xs = np.nonzero(region)
        assert record.centroid == pytest.approx((xs.mean() + x0, ys.mean() + y0))
    rectangle = records[0]
    assert rectangle.mean == pytest.approx((49 * 0.8 + 0.95) / 50, rel=1e-6)
    assert rectangle.centroid == pytest.approx((14.5, 7.0))
    assert rectangle.area_mm2 is None


def test_threshold_is_inclusive_and_nan_never_counts():
    m = np.zeros((5, 5), np.float32)
    m[1, 1] = 0.5
    m[3, 3] = np.nan
    assert [r.bbox for r in extract_defects(m, 0.5)] == [(1, 1, 2, 2)]
    assert extract_defects(m, 0.5000001) == []


def test_min_area_drops_specks_and_keeps_numbering_dense():
    m, _ = _hand_made()
    records = extract_defects(m, 0.5, min_area=3)
    assert [r.area_px for r in records] == [50, 36]
    assert [r.id for r in records] == [1, 2]


def test_roi_cuts_regions_and_pixel_size_gives_mm2():
    m, _ = _hand_made()
    roi = np.ones_like(m, dtype=bool)
    roi[:, 15:] = False  # keeps half of the rectangle and the L's whole bar and foot
    records = extract_defects(m, 0.5, roi=roi, pixel_size_mm=0.05)
    assert [(r.bbox, r.area_px) for r in records] == [
        ((10, 5, 15, 10), 25),
        ((5, 20, 15, 30), 36),
    ]
    assert records[0].area_mm2 == pytest.approx(25 * 0.05**2)


def test_against_skimage_regionprops_on_random_maps():
    measure = pytest.importorskip("skimage.measure")
    rng = np.random.default_rng(0)
    m = rng.random((64, 80)).astype(np.float32)
    records = extract_defects(m, 0.8)
    labels = measure.label(m >= 0.8, connectivity=2)
    props = measure.regionprops(labels, intensity_image=m)
    assert len(records) == len(props)
    ours = sorted((r.bbox, r.area_px, r.peak, r.mean) for r in records)
    theirs = sorted(
        (
            (p.bbox[1], p.bbox[0], p.bbox[3], p.bbox[2]),
            int(p.area),
            float(p.intensity_max),
            float(p.intensity_mean),
        )
        for p in props
    )
    assert [o[:2] for o in ours] == [t[:2] for t in theirs]
    assert np.allclose([o[2:] for o in ours], [t[2:] for t in theirs], rtol=1e-6)
    centroids = sorted(r.centroid for r in records)
    assert np.allclose(centroids, sorted((p.centroid[1], p.centroid[0]) for p in props))


def test_rle_is_column_major_and_round_trips():
    mask = np.array([[0, 1, 1], [0, 1, 0], [1, 0, 0]], bool)
    rows, cols = np.nonzero(mask)
    rle = rle_encode(rows, cols, mask.shape)
    # column-major: col0 = 0,0,1 -> col1 = 1,1,0 -> col2 = 1,0,0
    assert rle == {"size": [3, 3], "counts": [2, 3, 1, 1, 2]}
    assert np.array_equal(rle_decode(rle), mask)
    assert rle_encode(np.array([0]), np.array([0]), (2, 2))["counts"] == [0, 1, 3]
    assert rle_decode({"size": [2, 3], "counts": [6]}).sum() == 0


def test_records_carry_their_region_as_rle():
    m, _ = _hand_made()
    for record in extract_defects(m, 0.5, rle=True):
        region = rle_decode(record.rle)
        assert region.shape == m.shape and region.sum() == record.area_px
        assert (m[region] >= 0.5).all()
        ys, xs = np.nonzero(region)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == record.bbox


def test_record_serialisation():
    record = DefectRecord(3, (1, 2, 5, 9), 20, 0.5, 0.9, 0.7, (2.5, 4.0))
    assert record.to_dict() == {
        "id": 3,
        "bbox": [1, 2, 5, 9],
        "area_px": 20,
        "area_mm2": 0.5,
        "peak": 0.9,
        "mean": 0.7,
        "centroid": [2.5, 4.0],
    }
    assert record.csv_cells()["x1"] == 5 and record.csv_cells()["centroid_y"] == 4.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"min_area": 0}, "min_area"), ({"pixel_size_mm": 0.0}, "pixel_size_mm"),
     ({"roi": np.ones((3, 3), bool)}, "ROI")],
)  # fmt: skip
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        extract_defects(np.zeros((4, 4)), 0.5, **kwargs)
    with pytest.raises(ValueError, match="H, W"):
        extract_defects(np.zeros((2, 4, 4)), 0.5)


@pytest.mark.parametrize("band_pixels", [7, 40, 100])
def test_regions_crossing_band_edges_are_joined(monkeypatch, band_pixels):
    """Labelling in bands of rows (bounded memory) gives the records of one pass."""
    from tipsomaly.method import defects as module

    rng = np.random.default_rng(1)
    m = rng.random((37, 23)).astype(np.float32)
    m[3:30, 11] = 0.9  # a long bar across many bands
    roi = rng.random((37, 23)) > 0.1
    whole = extract_defects(m, 0.6, roi=roi, rle=True)
    monkeypatch.setattr(module, "BAND_PIXELS", band_pixels)
    banded = extract_defects(m, 0.6, roi=roi, rle=True)
    assert banded == whole
    assert sum(r.area_px for r in banded) == int(((m >= 0.6) & roi).sum())


def test_no_region_gives_no_record():
    assert extract_defects(np.zeros((10, 10)), 0.5) == []
