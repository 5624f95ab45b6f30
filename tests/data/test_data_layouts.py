"""tipsomaly.data.layouts: every native layout from a miniature tree, plus detection."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tipsomaly.data.layouts as layouts
from tipsomaly.data.layouts import (
    LAYOUT_NAMES,
    LAYOUTS,
    MVTEC_CLASSES,
    LayoutError,
    build_meta,
    detect_layout,
    register_layout,
)
from tipsomaly.data.meta import read_meta, write_meta


def _test(meta, cls):
    return meta["test"][cls]


def _summary(entries):
    """[(img_path, mask_path, specie, anomaly)] for compact assertions."""
    return [(e["img_path"], e["mask_path"], e["specie_name"], e["anomaly"]) for e in entries]


def _roundtrip(root: Path, meta) -> None:
    """The built dict writes and reads back as a valid meta.json with every file present."""
    write_meta(root, meta)
    loaded = read_meta(root, "test")
    assert len(loaded) == sum(len(v) for v in meta["test"].values())


# --------------------------------------------------------------------------- MVTec AD


def test_mvtec(mvtec_tree):
    assert detect_layout(mvtec_tree) == "mvtec"
    meta = build_meta(mvtec_tree, "mvtec")
    assert sorted(meta) == ["test", "train"]
    assert list(meta["test"]) == ["bottle", "wood"]
    assert _summary(_test(meta, "bottle")) == [
        ("bottle/test/broken/000.png", "bottle/ground_truth/broken/000_mask.png", "broken", 1),
        ("bottle/test/broken/001.png", "bottle/ground_truth/broken/001_mask.png", "broken", 1),
        (
            "bottle/test/contamination/000.png",
            "bottle/ground_truth/contamination/000_mask.png",
            "contamination",
            1,
        ),
        ("bottle/test/good/000.png", "", "good", 0),
        ("bottle/test/good/001.png", "", "good", 0),
    ]
    assert [e["cls_name"] for e in _test(meta, "wood")] == ["wood", "wood"]
    assert len(meta["train"]["bottle"]) == 2 and len(meta["train"]["wood"]) == 1
    assert all(e["anomaly"] == 0 for e in meta["train"]["bottle"])
    _roundtrip(mvtec_tree, meta)


def test_mvtec_single_class_root(mvtec_tree):
    meta = build_meta(mvtec_tree / "bottle", "mvtec")
    assert list(meta["test"]) == ["bottle"]
    assert _test(meta, "bottle")[0]["img_path"] == "test/broken/000.png"
    assert _test(meta, "bottle")[0]["mask_path"] == "ground_truth/broken/000_mask.png"


def test_mvtec_missing_mask_strict_and_lenient(mvtec_tree, caplog):
    (mvtec_tree / "bottle/ground_truth/broken/001_mask.png").unlink()
    with pytest.raises(LayoutError, match="no mask for bottle/test/broken/001.png"):
        build_meta(mvtec_tree, "mvtec")
    with caplog.at_level(logging.WARNING):
        meta = build_meta(mvtec_tree, "mvtec", strict_masks=False)
    entry = _test(meta, "bottle")[1]
    assert entry["img_path"] == "bottle/test/broken/001.png"
    assert entry["anomaly"] == 1 and entry["mask_path"] == ""
    assert "001.png" in caplog.text


def test_mvtec_defect_without_mask_folder_has_no_masks(mvtec_tree, save_image):
    save_image(mvtec_tree / "wood/test/stain/000.png")
    meta = build_meta(mvtec_tree, "mvtec")
    stain = [e for e in _test(meta, "wood") if e["specie_name"] == "stain"]
    assert stain == [
        {
            "img_path": "wood/test/stain/000.png",
            "mask_path": "",
            "cls_name": "wood",
            "specie_name": "stain",
            "anomaly": 1,
        }
    ]


def test_mvtec_ignores_hidden_and_non_image_files(mvtec_tree):
    (mvtec_tree / "bottle/test/good/.DS_Store").write_text("x")
    (mvtec_tree / "bottle/test/good/._000.png").write_text("x")
    (mvtec_tree / "bottle/test/good/readme.txt").write_text("x")
    meta = build_meta(mvtec_tree, "mvtec")
    assert len(_test(meta, "bottle")) == 5


def test_class_filter_and_errors(mvtec_tree, tmp_path):
    meta = build_meta(mvtec_tree, "mvtec", classes=["wood"])
    assert list(meta["test"]) == ["wood"] and list(meta["train"]) == ["wood"]
    with pytest.raises(LayoutError, match="pill.*found: bottle, wood"):
        build_meta(mvtec_tree, "mvtec", classes=["pill"])
    with pytest.raises(LayoutError, match="unknown layout 'mvtec3d'"):
        build_meta(mvtec_tree, "mvtec3d")
    with pytest.raises(LayoutError, match="unknown option"):
        build_meta(mvtec_tree, "mvtec", csv_path="x.csv")
    with pytest.raises(LayoutError, match="not a folder"):
        build_meta(tmp_path / "nope", "mvtec")
    assert build_meta(mvtec_tree, "MVTec") == build_meta(mvtec_tree)


def test_published_counts_are_checked(tmp_path, save_image, caplog):
    root = tmp_path / "mvtec_full"
    for cls in MVTEC_CLASSES:
        save_image(root / cls / "test/good/000.png")
    with caplog.at_level(logging.WARNING):
        build_meta(root, "mvtec")
    assert "15 normal / 0 anomalous" in caplog.text and "467 / 1258" in caplog.text


# --------------------------------------------------------------------------- VisA


def _visa_tree(root: Path, save_image, save_mask) -> Path:
    rows = ["object,split,label,image,mask"]
    for cls in ("candle", "pcb1"):
        for i in range(2):
            img = f"{cls}/Data/Images/Normal/{i:04d}.JPG"
            save_image(root / img)
            rows.append(f"{cls},train,normal,{img},")
        img = f"{cls}/Data/Images/Normal/0100.JPG"
        save_image(root / img)
        rows.append(f"{cls},test,normal,{img},")
        img, mask = f"{cls}/Data/Images/Anomaly/000.JPG", f"{cls}/Data/Masks/Anomaly/000.png"
        save_image(root / img)
        save_mask(root / mask)
        rows.append(f"{cls},test,anomaly,{img},{mask}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa(tmp_path, save_image, save_mask):
    root = _visa_tree(tmp_path / "visa", save_image, save_mask)
    assert detect_layout(root) == "visa"
    meta = build_meta(root, "visa")
    assert list(meta["test"]) == ["candle", "pcb1"]
    assert _summary(_test(meta, "pcb1")) == [
        ("pcb1/Data/Images/Anomaly/000.JPG", "pcb1/Data/Masks/Anomaly/000.png", "bad", 1),
        ("pcb1/Data/Images/Normal/0100.JPG", "", "good", 0),
    ]
    assert len(meta["train"]["candle"]) == 2
    _roundtrip(root, meta)


def test_visa_bad_rows_name_the_line(tmp_path, save_image, save_mask):
    root = _visa_tree(tmp_path / "visa", save_image, save_mask)
    csv_path = root / "split_csv/1cls.csv"
    lines = csv_path.read_text().splitlines()
    lines[3] = lines[3].replace(",normal,", ",weird,")
    lines.append("pcb1,test,anomaly,pcb1/Data/Images/Anomaly/999.JPG,x.png")
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LayoutError) as info:
        build_meta(root, "visa")
    msg = str(info.value)
    assert "1cls.csv line 4: label must be normal or anomaly, got 'weird'" in msg
    assert "image not found: pcb1/Data/Images/Anomaly/999.JPG" in msg


def test_visa_other_csv_and_missing_csv(tmp_path, save_image, save_mask):
    root = _visa_tree(tmp_path / "visa", save_image, save_mask)
    (root / "split_csv/1cls.csv").rename(root / "split_csv/mine.csv")
    assert len(build_meta(root, "visa", csv_path="split_csv/mine.csv")["test"]) == 2
    with pytest.raises(LayoutError, match="1cls.csv not found"):
        build_meta(root, "visa")


def test_visa_pytorch_converted_tree(tmp_path, save_image, save_mask):
    root = tmp_path / "visa_pytorch"
    save_image(root / "candle/train/good/000.JPG")
    save_image(root / "candle/test/good/001.JPG")
    save_image(root / "candle/test/bad/002.JPG")
    save_mask(root / "candle/ground_truth/bad/002.png")
    assert detect_layout(root) == "visa"
    meta = build_meta(root, "visa")
    assert _summary(_test(meta, "candle")) == [
        ("candle/test/bad/002.JPG", "candle/ground_truth/bad/002.png", "bad", 1),
        ("candle/test/good/001.JPG", "", "good", 0),
    ]


# --------------------------------------------------------------------------- MPDD, BTAD, DTD


def test_mpdd(tmp_path, save_image, save_mask):
    root = tmp_path / "mpdd"
    for cls in ("bracket_black", "tubes"):
        save_image(root / cls / "train/good/000.png")
        save_image(root / cls / "test/good/000.png")
        save_image(root / cls / "test/scratches/000.png")
        save_mask(root / cls / "ground_truth/scratches/000_mask.png")
    assert detect_layout(root) == "mpdd"
    meta = build_meta(root, "mpdd")
    assert list(meta["test"]) == ["bracket_black", "tubes"]
    assert _summary(_test(meta, "tubes")) == [
        ("tubes/test/good/000.png", "", "good", 0),
        (
            "tubes/test/scratches/000.png",
            "tubes/ground_truth/scratches/000_mask.png",
            "scratches",
            1,
        ),
    ]
    _roundtrip(root, meta)


def test_btad_mixed_extensions(tmp_path, save_image, save_mask):
    root = tmp_path / "BTech_Dataset_transformed"
    # 01: bmp images, png masks; 02: png images and masks; 03: bmp images and bmp masks
    for cls, img_ext, mask_ext in (
        ("01", ".bmp", ".png"),
        ("02", ".png", ".png"),
        ("03", ".bmp", ".bmp"),
    ):
        save_image(root / cls / f"train/ok/0000{img_ext}")
        save_image(root / cls / f"test/ok/0001{img_ext}")
        save_image(root / cls / f"test/ko/0002{img_ext}")
        save_image(root / cls / f"test/ko/0003{img_ext}")
        save_mask(root / cls / f"ground_truth/ko/0002{mask_ext}")
        save_mask(root / cls / f"ground_truth/ko/0003{mask_ext}")
    assert detect_layout(root) == "btad"
    meta = build_meta(root, "btad")
    assert list(meta["test"]) == ["01", "02", "03"]
    assert _summary(_test(meta, "03")) == [
        ("03/test/ko/0002.bmp", "03/ground_truth/ko/0002.bmp", "ko", 1),
        ("03/test/ko/0003.bmp", "03/ground_truth/ko/0003.bmp", "ko", 1),
        ("03/test/ok/0001.bmp", "", "ok", 0),
    ]
    assert _test(meta, "01")[0]["mask_path"] == "01/ground_truth/ko/0002.png"
    assert meta["train"]["02"][0] == {
        "img_path": "02/train/ok/0000.png",
        "mask_path": "",
        "cls_name": "02",
        "specie_name": "ok",
        "anomaly": 0,
    }
    _roundtrip(root, meta)


def test_dtd(tmp_path, save_image, save_mask):
    root = tmp_path / "DTD-Synthetic"
    for cls in ("Woven_001", "Blotchy_099"):
        save_image(root / cls / "train/good/000.png")
        save_image(root / cls / "test/good/000.png")
        save_image(root / cls / "test/bad/000.png")
        save_image(root / cls / "test/bad/001.png")
        save_mask(root / cls / "ground_truth/bad/000_mask.png")
        save_mask(root / cls / "ground_truth/bad/001_mask.png")
    assert detect_layout(root) == "dtd"
    meta = build_meta(root, "dtd")
    assert list(meta["test"]) == ["Blotchy_099", "Woven_001"]
    assert [e["anomaly"] for e in _test(meta, "Woven_001")] == [1, 1, 0]
    assert _test(meta, "Woven_001")[1]["mask_path"] == "Woven_001/ground_truth/bad/001_mask.png"
    _roundtrip(root, meta)


# --------------------------------------------------------------------------- KSDD


def test_ksdd_converted_tree(tmp_path, save_image, save_mask):
    root = tmp_path / "SDD_anomaly_detection"
    save_image(root / "SDD/train/good/kos01_Part0_0.png")
    save_image(root / "SDD/test/good/kos01_Part0_1.png")
    save_image(root / "SDD/test/defect/kos01_Part5_2.png")
    save_mask(root / "SDD/ground_truth/defect/kos01_Part5_2_mask.png")
    assert detect_layout(root) == "ksdd"
    meta = build_meta(root, "ksdd")
    assert _summary(_test(meta, "SDD")) == [
        (
            "SDD/test/defect/kos01_Part5_2.png",
            "SDD/ground_truth/defect/kos01_Part5_2_mask.png",
            "defect",
            1,
        ),
        ("SDD/test/good/kos01_Part0_1.png", "", "good", 0),
    ]
    assert len(meta["train"]["SDD"]) == 1
    _roundtrip(root, meta)


def test_ksdd_original_tree(tmp_path, save_image, save_mask):
    root = tmp_path / "KolektorSDD"
    for kos in ("kos01", "kos02"):
        for part in range(2):
            save_image(root / kos / f"Part{part}.jpg", size=(10, 30), mode="L")
    save_mask(root / "kos01/Part1_label.bmp", size=(10, 30), box=(2, 10, 5, 14))
    for name in ("kos01/Part0_label.bmp", "kos02/Part0_label.bmp", "kos02/Part1_label.bmp"):
        save_mask(root / name, size=(10, 30), box=(0, 0, 0, 0))  # empty label: normal
    assert detect_layout(root) == "ksdd"
    meta = build_meta(root, "ksdd")
    assert meta["train"] == {}
    assert _summary(_test(meta, "electrical commutators")) == [
        ("kos01/Part0.jpg", "", "good", 0),
        ("kos01/Part1.jpg", "kos01/Part1_label.bmp", "defect", 1),
        ("kos02/Part0.jpg", "", "good", 0),
        ("kos02/Part1.jpg", "", "good", 0),
    ]
    assert list(build_meta(root, "ksdd", class_name="ksdd")["test"]) == ["ksdd"]
    _roundtrip(root, meta)
    (root / "kos02/Part1_label.bmp").unlink()
    with pytest.raises(LayoutError, match="no label image for kos02/Part1.jpg"):
        build_meta(root, "ksdd")


# --------------------------------------------------------------------------- DAGM


def test_dagm_original_tree(tmp_path, save_image, save_mask):
    root = tmp_path / "DAGM_KaggleUpload"
    for cls in ("Class1", "Class10"):
        for split in ("Train", "Test"):
            for i in (1, 2, 3):
                save_image(root / cls / split / f"{i:04d}.PNG", mode="L")
            save_mask(root / cls / split / "Label/0002_label.PNG")
            (root / cls / split / "Label/Labels.txt").write_text("1\n")
    assert detect_layout(root) == "dagm"
    meta = build_meta(root, "dagm")
    assert list(meta["test"]) == ["Class1", "Class10"]
    assert _summary(_test(meta, "Class10")) == [
        ("Class10/Test/0001.PNG", "", "good", 0),
        ("Class10/Test/0002.PNG", "Class10/Test/Label/0002_label.PNG", "defect", 1),
        ("Class10/Test/0003.PNG", "", "good", 0),
    ]
    assert [e["anomaly"] for e in meta["train"]["Class1"]] == [0, 1, 0]
    _roundtrip(root, meta)


def test_dagm_converted_tree(tmp_path, save_image, save_mask):
    root = tmp_path / "DAGM_anomaly_detection"
    save_image(root / "Class3/train/good/0001.PNG")
    save_image(root / "Class3/test/good/0004.PNG")
    save_image(root / "Class3/test/defect/0002.PNG")
    save_mask(root / "Class3/ground_truth/defect/0002_label.PNG")
    assert detect_layout(root) == "dagm"
    meta = build_meta(root, "dagm")
    assert _summary(_test(meta, "Class3")) == [
        ("Class3/test/defect/0002.PNG", "Class3/ground_truth/defect/0002_label.PNG", "defect", 1),
        ("Class3/test/good/0004.PNG", "", "good", 0),
    ]


# --------------------------------------------------------------------------- medical


def test_medical_mvtec_like_classification_and_segmentation(tmp_path, save_image, save_mask):
    cls_root = tmp_path / "BrainMRI_anomaly_detection"
    save_image(cls_root / "brain_mri/test/good/no1.jpg")
    save_image(cls_root / "brain_mri/test/Ungood/y1.jpg")
    assert detect_layout(cls_root) == "medical"
    meta = build_meta(cls_root, "medical")
    assert _summary(_test(meta, "brain_mri")) == [
        ("brain_mri/test/Ungood/y1.jpg", "", "Ungood", 1),
        ("brain_mri/test/good/no1.jpg", "", "good", 0),
    ]
    _roundtrip(cls_root, meta)

    seg_root = tmp_path / "ISIC"
    save_image(seg_root / "isic/test/defect/ISIC_0000003.jpg")
    save_mask(seg_root / "isic/ground_truth/defect/ISIC_0000003_Segmentation.png")
    meta = build_meta(seg_root, "medical")
    assert _summary(_test(meta, "isic")) == [
        (
            "isic/test/defect/ISIC_0000003.jpg",
            "isic/ground_truth/defect/ISIC_0000003_Segmentation.png",
            "defect",
            1,
        ),
    ]


def test_medical_image_mask_pairs(tmp_path, save_image, save_mask):
    root = tmp_path / "tn3k"
    for i in range(2):
        save_image(root / f"test-image/{i:04d}.jpg")
        save_mask(root / f"test-mask/{i:04d}.jpg")
    save_image(root / "trainval-image/0005.jpg")
    assert detect_layout(root) == "medical"
    meta = build_meta(root, "medical")
    assert _summary(_test(meta, "tn3k")) == [
        ("test-image/0000.jpg", "test-mask/0000.jpg", "defect", 1),
        ("test-image/0001.jpg", "test-mask/0001.jpg", "defect", 1),
    ]
    clinic = tmp_path / "CVC-ClinicDB"
    save_image(clinic / "Original/1.tif")
    save_mask(clinic / "Ground Truth/1.tif")
    meta = build_meta(clinic, "medical", class_name="ClinicDB")
    assert _summary(_test(meta, "ClinicDB")) == [
        ("Original/1.tif", "Ground Truth/1.tif", "defect", 1)
    ]
    _roundtrip(clinic, meta)


def test_medical_yes_no_and_headct(tmp_path, save_image):
    root = tmp_path / "Br35H"
    save_image(root / "yes/y0.jpg")
    save_image(root / "yes/y1.jpg")
    save_image(root / "no/no0.jpg")
    save_image(root / "pred/p0.jpg")  # unlabelled: ignored
    assert detect_layout(root) == "medical"
    meta = build_meta(root, "medical")
    assert _summary(_test(meta, "br35h")) == [
        ("no/no0.jpg", "", "good", 0),
        ("yes/y0.jpg", "", "defect", 1),
        ("yes/y1.jpg", "", "defect", 1),
    ]
    mri = tmp_path / "BrainMRI"
    save_image(mri / "brain_tumor_dataset/yes/Y1.jpg")
    save_image(mri / "brain_tumor_dataset/no/N1.jpg")
    meta = build_meta(mri, "medical", class_name="brain_mri")
    assert [e["img_path"] for e in _test(meta, "brain_mri")] == [
        "brain_tumor_dataset/no/N1.jpg",
        "brain_tumor_dataset/yes/Y1.jpg",
    ]

    head = tmp_path / "head_ct"
    for i in range(3):
        save_image(head / f"head_ct/head_ct/{i:03d}.png", mode="L")
    (head / "labels.csv").write_text("id, hemorrhage\n0,1\n1,1\n2,0\n")
    assert detect_layout(head) == "medical"
    meta = build_meta(head, "medical")
    assert _summary(_test(meta, "headct")) == [
        ("head_ct/head_ct/000.png", "", "defect", 1),
        ("head_ct/head_ct/001.png", "", "defect", 1),
        ("head_ct/head_ct/002.png", "", "good", 0),
    ]
    _roundtrip(head, meta)
    (head / "labels.csv").write_text("id, hemorrhage\n0,1\n7,0\n")
    with pytest.raises(LayoutError, match="line 3: image not found: head_ct/head_ct/007.png"):
        build_meta(head, "medical")


def test_medical_unrecognised(tmp_path, save_image):
    save_image(tmp_path / "stuff/a.png")
    with pytest.raises(LayoutError, match="matches none of the accepted trees"):
        build_meta(tmp_path, "medical")


# --------------------------------------------------------------------------- generic folder


def test_folder(tmp_path, save_image, save_mask):
    root = tmp_path / "mine"
    save_image(root / "widget/good/a.png")
    save_image(root / "widget/good/b.jpg")
    save_image(root / "widget/dent/c.png")
    save_image(root / "widget/dent/d.png")
    save_mask(root / "widget/ground_truth/dent/c_mask.png")
    save_mask(root / "widget/ground_truth/dent/d.png")
    save_image(root / "widget/loose.png")  # ignored: no label
    save_image(root / "gadget/ok/x.png")
    save_image(root / "gadget/crack/y.png")
    save_mask(root / "gadget/masks/crack/y_gt.bmp")
    save_image(root / "gadget/scratch/z.png")  # no mask folder: label only
    assert detect_layout(root) == "folder"
    meta = build_meta(root, "folder")
    assert meta["train"] == {}
    assert _summary(_test(meta, "widget")) == [
        ("widget/dent/c.png", "widget/ground_truth/dent/c_mask.png", "dent", 1),
        ("widget/dent/d.png", "widget/ground_truth/dent/d.png", "dent", 1),
        ("widget/good/a.png", "", "good", 0),
        ("widget/good/b.jpg", "", "good", 0),
    ]
    assert _summary(_test(meta, "gadget")) == [
        ("gadget/crack/y.png", "gadget/masks/crack/y_gt.bmp", "crack", 1),
        ("gadget/ok/x.png", "", "ok", 0),
        ("gadget/scratch/z.png", "", "scratch", 1),
    ]
    _roundtrip(root, meta)
    single = build_meta(root / "widget", "folder")
    assert list(single["test"]) == ["widget"] and len(single["test"]["widget"]) == 4


def test_folder_empty(tmp_path):
    (tmp_path / "empty/nothing").mkdir(parents=True)
    with pytest.raises(LayoutError, match="no <class>/<good|defect>/<image>"):
        build_meta(tmp_path / "empty", "folder")


# --------------------------------------------------------------------------- registry, detect


def test_registry_names_in_registration_order():
    """Each builder registers under its function name; the import order in __init__ is the order."""
    expected = ("mvtec", "mpdd", "btad", "dtd", "visa", "ksdd", "dagm", "medical", "folder")
    assert tuple(LAYOUTS) == expected
    assert LAYOUT_NAMES == expected
    assert all(LAYOUTS[name].__name__ == name for name in LAYOUTS)
    assert LAYOUTS["mvtec"] is layouts.mvtec and LAYOUTS["folder"] is layouts.folder


def test_register_layout_adds_a_builder_and_refuses_a_second_of_the_same_name(monkeypatch):
    from tipsomaly.data.layouts import _registry

    monkeypatch.setattr(_registry, "LAYOUTS", {})

    def extra(root, *, strict_masks=True):
        return {"train": {}, "test": {}}

    assert register_layout(extra) is extra
    assert _registry.LAYOUTS == {"extra": extra}
    with pytest.raises(ValueError, match="layout 'extra' is registered twice"):
        register_layout(extra)


def test_data_meta_help_lists_the_registered_layouts():
    from tipsomaly.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb").choices["data"]
    meta = next(a for a in sub._actions if a.dest == "data_verb").choices["meta"]
    layout = next(a for a in meta._actions if a.dest == "layout")
    assert f"native layout: {', '.join(LAYOUTS)} (default: detected)" == layout.help


def test_detect_unrecognised(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(LayoutError, match="cannot recognise the layout"):
        detect_layout(tmp_path)
    with pytest.raises(LayoutError, match="not a folder"):
        detect_layout(tmp_path / "missing")


def test_built_masks_load_with_the_mask_rule(tmp_path, save_image):
    """The mask a layout points at is read by load_mask (an RGB mask works)."""
    from tipsomaly.data.images import load_mask

    root = tmp_path / "m"
    save_image(root / "c/test/bad/0.png")
    arr = np.zeros((6, 8, 3), np.uint8)
    arr[1:3, 1:3] = 255
    (root / "c/ground_truth/bad").mkdir(parents=True)
    Image.fromarray(arr).save(root / "c/ground_truth/bad/0_mask.png")
    meta = build_meta(root, "mvtec")
    _roundtrip(root, meta)
    mask_path = root / meta["test"]["c"][0]["mask_path"]
    assert load_mask(mask_path, None).sum().item() == 4
