"""tipsomaly.data.images: robust loading, colour conversion, preprocessing and mask rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tipsomaly.data.images import (
    ImageLoadError,
    load_image,
    load_mask,
    load_tensor,
    original_hw,
    pil_to_tensor,
    preprocess,
    resize_mask,
    to_rgb,
)
from tipsomaly.errors import TipsomalyError

RNG = np.random.default_rng(0)


def _reference_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """What the reference does: convert('RGB') → PIL bilinear resize → ToTensor (÷255)."""
    arr = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def _two_colour(w: int = 8, h: int = 4) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(a)


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("ext", [".jpg", ".png", ".tif"])
def test_exif_orientation_is_applied(tmp_path, ext):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / f"rotated{ext}"
    _two_colour(8, 4).save(path, exif=exif, **({"quality": 95} if ext == ".jpg" else {}))

    img = load_image(path)
    assert img.mode == "RGB"
    assert img.size == (4, 8)  # (width, height): upright, sides swapped
    arr = np.asarray(img).astype(int)
    # the left (red) half of the stored pixels is the top after a clockwise quarter turn
    assert np.abs(arr[0, 0] - (255, 0, 0)).max() < 8
    assert np.abs(arr[-1, -1] - (0, 0, 255)).max() < 8
    assert original_hw(path) == (8, 4)
    tensor, hw = load_tensor(path, 16)
    assert hw == (8, 4) and tuple(tensor.shape) == (3, 16, 16)


def test_no_orientation_tag_keeps_pixels(tmp_path):
    path = tmp_path / "plain.png"
    img = _two_colour(8, 4)
    img.save(path)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(img))
    assert original_hw(path) == (4, 8)


# --------------------------------------------------------------------------- colour modes


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    arr = np.asarray(load_image(tmp_path / "g.png"))
    assert arr.shape == (5, 7, 3)
    for c in range(3):
        assert np.array_equal(arr[..., c], gray)


@pytest.mark.parametrize("transparency", [None, 1, "bytes"])
def test_palette_images_use_their_palette(tmp_path, transparency):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    img = Image.fromarray(idx, mode="P")
    palette = [10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9)
    img.putpalette(palette)
    kwargs = {}
    if transparency == "bytes":
        kwargs["transparency"] = bytes([0, 128] + [255] * 254)
    elif transparency is not None:
        kwargs["transparency"] = transparency
    img.save(tmp_path / "p.png", **kwargs)
    arr = np.asarray(load_image(tmp_path / "p.png"))
    assert arr[0, 0].tolist() == [10, 20, 30]
    assert arr[0, 1].tolist() == [200, 100, 50]  # transparent index keeps its colour
    assert arr[1, 0].tolist() == [0, 255, 0]


def test_rgba_alpha_is_dropped_like_the_reference(tmp_path):
    rgba = RNG.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0  # fully transparent pixel keeps its colour, it is not composited
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    arr = np.asarray(load_image(tmp_path / "a.png"))
    assert np.array_equal(arr, rgba[..., :3])
    ref = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    assert np.array_equal(arr, ref)


def test_la_drops_alpha(tmp_path):
    la = RNG.integers(0, 256, (3, 5, 2), dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    arr = np.asarray(load_image(tmp_path / "la.png"))
    assert np.array_equal(arr[..., 1], la[..., 0])


def test_cmyk_matches_pillow_conversion(tmp_path):
    cmyk = RNG.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.tif")
    arr = np.asarray(load_image(tmp_path / "c.tif"))
    assert np.array_equal(arr, np.asarray(Image.open(tmp_path / "c.tif").convert("RGB")))
    _two_colour().convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    assert load_image(tmp_path / "c.jpg").mode == "RGB"


def test_one_bit_images(tmp_path):
    bits = np.array([[0, 1, 1], [1, 0, 0]], bool)
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    arr = np.asarray(load_image(tmp_path / "b.png"))
    assert np.array_equal(arr[..., 0], bits.astype(np.uint8) * 255)


def test_16bit_grayscale_png_keeps_the_high_byte(tmp_path, write_png16):
    values = np.array([[0, 255, 256, 4000], [32768, 40000, 65280, 65535]], np.uint16)
    write_png16(tmp_path / "g16.png", values)
    assert Image.open(tmp_path / "g16.png").mode == "I;16"  # what Pillow 13 opens
    arr = np.asarray(load_image(tmp_path / "g16.png"))
    assert np.array_equal(arr[..., 0], (values >> 8).astype(np.uint8))
    # Pillow's own convert would saturate everything above 255:
    saturated = np.asarray(Image.open(tmp_path / "g16.png").convert("RGB"))[..., 0]
    assert saturated[0, 3] == 255 and arr[0, 3, 0] == 4000 >> 8


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16bit_colour_png_is_consistent_with_grayscale_rule(tmp_path, write_png16, channels):
    values = RNG.integers(0, 65536, (3, 4, channels), dtype=np.uint16)
    write_png16(tmp_path / "c16.png", values)
    arr = np.asarray(load_image(tmp_path / "c16.png"))
    high = (values >> 8).astype(np.uint8)
    if channels == 2:
        expected = np.repeat(high[..., :1], 3, axis=2)
    else:
        expected = high[..., :3]
    assert np.array_equal(arr, expected)


@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_16bit_tiff(tmp_path, dtype):
    values = np.array([[0, 1, 1000, 65535]], dtype=dtype)
    Image.fromarray(values).save(tmp_path / "g16.tif")
    arr = np.asarray(load_image(tmp_path / "g16.tif"))
    assert arr[0, :, 0].tolist() == [0, 0, 3, 255]


def test_int32_and_float_modes():
    i32 = Image.fromarray(np.array([[-5, 256, 65535, 70000]], np.int32))
    assert i32.mode == "I"
    assert np.asarray(to_rgb(i32))[0, :, 0].tolist() == [0, 1, 255, 255]
    f32 = Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0, -1.0]], np.float32))
    assert f32.mode == "F"
    assert np.asarray(to_rgb(f32))[0, :, 0].tolist() == [0, 128, 255, 255, 0]


# --------------------------------------------------------------------------- broken files


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty file") as info:
        load_image(path)
    assert "empty.png" in str(info.value) and info.value.path == path


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageLoadError, match="not a recognised image format") as info:
        load_image(path)
    assert "notes.png" in str(info.value)
    # the file's content is never echoed into a message (it may be a secret read by mistake)
    assert "this is" not in str(info.value) and "this is" not in repr(info.value.reason)


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated or corrupt") as info:
        load_image(path)
    assert "cut.png" in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found") as info:
        load_image(tmp_path / "nowhere.png")
    assert "nowhere.png" in str(info.value)
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError, match="not found"):
        original_hw(tmp_path / "nowhere.png")
    with pytest.raises(ImageLoadError):
        load_mask(tmp_path / "nowhere.png", 8)


def test_image_load_error_pickles(tmp_path):
    import pickle

    err = pickle.loads(pickle.dumps(ImageLoadError(tmp_path / "x.png", "boom")))
    assert err.reason == "boom" and "x.png" in str(err)
    assert isinstance(err, OSError) and err.path == tmp_path / "x.png"


def test_image_load_error_keeps_its_builtin_base(tmp_path):
    """Like every tipsomaly error (errors.py), it keeps a builtin base: OSError, a file that
    cannot be read; callers catching OSError catch it, its message stays the same."""
    assert issubclass(ImageLoadError, TipsomalyError) and issubclass(ImageLoadError, OSError)
    with pytest.raises(OSError) as info:
        load_image(tmp_path / "nowhere.png")
    assert type(info.value) is ImageLoadError
    assert str(info.value) == f"cannot load image '{tmp_path / 'nowhere.png'}': file not found"
    assert info.value.errno is None and info.value.path == tmp_path / "nowhere.png"


# --------------------------------------------------------------------------- preprocess


@pytest.mark.parametrize("size", [7, 16, 37])
def test_preprocess_equals_direct_pil_resize(size):
    img = Image.fromarray(RNG.integers(0, 256, (23, 31, 3), dtype=np.uint8))
    out = preprocess(img, size)
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, size, size)
    assert torch.equal(out, _reference_tensor(img, size))
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_preprocess_of_non_rgb_pil_images():
    gray = Image.fromarray(RNG.integers(0, 256, (9, 9), dtype=np.uint8), mode="L")
    assert torch.equal(preprocess(gray, 5), _reference_tensor(gray, 5))
    rgba = Image.fromarray(RNG.integers(0, 256, (9, 9, 4), dtype=np.uint8), mode="RGBA")
    assert torch.equal(preprocess(rgba, 5), _reference_tensor(rgba, 5))


def test_preprocess_arrays_follow_the_pil_path():
    rgb = RNG.integers(0, 256, (11, 13, 3), dtype=np.uint8)
    expected = preprocess(Image.fromarray(rgb), 8)
    assert torch.equal(preprocess(rgb, 8), expected)
    rgba = np.concatenate([rgb, np.zeros((11, 13, 1), np.uint8)], axis=2)
    assert torch.equal(preprocess(rgba, 8), expected)
    assert torch.equal(preprocess(rgb.astype(np.float32) / 255.0, 8), expected)
    assert torch.equal(preprocess(rgb.astype(np.uint16) * 257, 8), expected)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    assert torch.equal(preprocess(chw, 8), expected)
    assert torch.equal(preprocess(chw.float() / 255.0, 8), expected)
    gray = rgb[..., 0]
    g_expected = preprocess(Image.fromarray(gray, mode="L"), 8)
    assert torch.equal(preprocess(gray, 8), g_expected)
    assert torch.equal(preprocess(gray[..., None], 8), g_expected)
    assert torch.equal(preprocess(torch.from_numpy(gray), 8), g_expected)
    assert torch.equal(preprocess(torch.from_numpy(gray)[None], 8), g_expected)


def test_preprocess_float_arrays_are_clipped_to_unit_range():
    arr = np.full((4, 4, 3), 2.0, np.float32)
    assert torch.equal(preprocess(arr, 2), torch.ones(3, 2, 2))
    assert torch.equal(preprocess(-arr, 2), torch.zeros(3, 2, 2))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((3, 8, 8), np.uint8), "channels-first"),
        (np.zeros((8, 8, 5), np.uint8), "HxW"),
        (np.zeros((2, 2, 8, 8), np.uint8), "HxW"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
        (np.full((4, 4), 300, np.int32), r"\[0, 255\]"),
        (torch.zeros(8, 8, 3), "channels-last"),
        (torch.zeros(2, 3, 8, 8), "batch"),
    ],
)
def test_preprocess_rejects_ambiguous_inputs(bad, match):
    with pytest.raises(ValueError, match=match):
        preprocess(bad, 4)


def test_preprocess_rejects_bad_size_and_type():
    img = Image.new("RGB", (4, 4))
    for size in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            preprocess(img, size)
    with pytest.raises(TypeError):
        preprocess([[0, 1]], 4)


def test_pil_to_tensor_is_to_tensor():
    img = Image.fromarray(RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8))
    t = pil_to_tensor(img)
    assert tuple(t.shape) == (3, 3, 5)
    assert torch.equal(t, torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1) / 255.0)


# --------------------------------------------------------------------------- masks


def _reference_mask(path, size: int) -> np.ndarray:
    """The reference rule: convert('L') > 0 → 0/255 L → bilinear resize → ToTensor → > 0.5."""
    binary = np.asarray(Image.open(path).convert("L")) > 0
    im = Image.fromarray(binary.astype(np.uint8) * 255, mode="L")
    resized = np.asarray(im.resize((size, size), Image.BILINEAR)).astype(np.float32) / 255.0
    return (resized > 0.5).astype(np.float32)


def test_mask_binarisation_and_resize_rule(tmp_path):
    arr = np.zeros((40, 60), np.uint8)
    arr[5:25, 10:30] = 255
    arr[30:32, 40:42] = 1  # faint but non-zero: anomalous before resizing
    arr[35, 5] = 255  # a single pixel vanishes when shrunk (below the 0.5 threshold)
    Image.fromarray(arr, mode="L").save(tmp_path / "m.png")
    for size in (7, 16, 23, 80):
        mask = load_mask(tmp_path / "m.png", size)
        assert mask.dtype == torch.float32 and tuple(mask.shape) == (size, size)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert np.array_equal(mask.numpy(), _reference_mask(tmp_path / "m.png", size))
    full = load_mask(tmp_path / "m.png", None)
    assert tuple(full.shape) == (40, 60)
    assert full.sum().item() == 20 * 20 + 4 + 1


def test_mask_threshold_is_half(tmp_path):
    binary = np.zeros((2, 2), bool)
    binary[0, 0] = True
    # 2x2 → 1x1 bilinear averages to 63.75 → below 0.5 → 0; 3 of 4 set → 191 → 1
    assert resize_mask(binary, 1).item() == 0.0
    binary[:, 0] = True
    binary[0, 1] = True
    assert resize_mask(binary, 1).item() == 1.0


def test_mask_modes(tmp_path, write_png16):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1:3, 1:3] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert load_mask(tmp_path / "rgb.png", None).sum().item() == 4
    m16 = np.zeros((4, 4), np.uint16)
    m16[0, 0] = 1
    m16[3, 3] = 65535
    write_png16(tmp_path / "m16.png", m16)
    assert load_mask(tmp_path / "m16.png", None).sum().item() == 2
    Image.fromarray(rgb[..., 0] > 0).convert("1").save(tmp_path / "bits.png")
    assert load_mask(tmp_path / "bits.png", None).sum().item() == 4


def test_normal_image_mask_is_zero():
    mask = load_mask(None, 12)
    assert tuple(mask.shape) == (12, 12) and mask.dtype == torch.float32
    assert mask.sum().item() == 0
    with pytest.raises(ValueError):
        load_mask(None, None)


def test_broken_mask_names_the_file(tmp_path):
    (tmp_path / "m.png").write_text("nope")
    with pytest.raises(ImageLoadError, match="m.png"):
        load_mask(tmp_path / "m.png", 8)
