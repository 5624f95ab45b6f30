"""Image and mask loading and preprocessing: the one place that decides how pixels reach the model.

The rules follow the reference TipsOmaly code (``Image.open(p).convert("RGB")``, torchvision
``Resize((S, S))`` on the PIL image, ``ToTensor()``, mean 0 / std 1), made robust:

* **Orientation.** :func:`load_image` and :func:`load_mask` apply the EXIF orientation tag
  (``ImageOps.exif_transpose``) before anything else, so a phone JPEG is seen upright. The
  reference does not; the industrial and medical benchmarks are PNG/BMP/TIFF without an
  orientation tag, so their scores are unaffected.
* **Colour.** Every mode becomes 8-bit RGB (:func:`to_rgb`). Alpha (``LA``, ``PA``, ``RGBA``, ``P``
  with transparency) is *dropped*, not composited, exactly as ``convert("RGB")`` in the
  reference does, so that scores match it. ``P``, ``1``, ``L``, ``CMYK``, ``YCbCr`` … use
  Pillow's own ``convert("RGB")``.
* **16 bit.** Pillow's ``convert`` saturates 16-bit grey images (every value above 255 becomes
  255). Instead 16-bit samples are reduced to 8 bit by keeping the high byte (``v >> 8``).
  That is the rule Pillow itself applies when it opens 16-bit RGB/RGBA/LA PNGs (Pillow 13 opens
  them as 8-bit ``RGB``/``RGBA`` holding the high byte), and the rule of OpenCV's ``imread``,
  so a 16-bit grey PNG and a 16-bit colour PNG are treated alike. Pillow 13 opens 16-bit grey
  PNG/TIFF as ``I;16``/``I;16B``; mode ``I`` (32-bit integer, e.g. older Pillow's 16-bit PNGs)
  is taken to hold 16-bit values (clipped to [0, 65535]) and reduced the same way. Mode ``F``
  (32-bit float) is taken to be in [0, 1] (clipped, ×255, rounded).
* **Size.** ``Image.resize((S, S), BILINEAR)``: the aspect ratio is not kept, and Pillow's
  bilinear filter antialiases when shrinking (the same call torchvision's ``Resize`` makes on a
  PIL image).
* **Scale.** float32 in [0, 1] (``/ 255``), channels first; no mean/std normalisation.
* **Masks.** ``convert("L")``, binarised with ``> 0``, stored as a 0/255 ``L`` image, resized
  with the same bilinear filter, then thresholded at 0.5 (``v / 255 > 0.5``, i.e. ``v >= 128``),
  which is what the reference (AnomalyCLIP / AdaCLIP / TipsOmaly datasets) computes.

Sizes: ``size`` arguments are the side S of the square model input, in pixels. Original sizes
are reported as ``(height, width)`` (the order ``torch.nn.functional.interpolate`` wants).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import TipsomalyError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
ImageInput = Image.Image | np.ndarray | torch.Tensor

#: File extensions (lower case) treated as images when scanning folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ORIENTATION_TAG = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # these swap width and height


class ImageLoadError(TipsomalyError):
    """An image or mask file could not be read.

    Attributes:
        path: the file.
        reason: a short, human-readable description of the problem.
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot load image '{self.path}': {reason}")

    def __reduce__(self):  # keep it picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer (the side of the square), got {size!r}")
    return int(size)


def open_image(path: PathLike) -> Image.Image:
    """Open, fully decode and orient ``path``, keeping its mode (no colour conversion).

    Every failure becomes an :class:`ImageLoadError` naming the file and the problem.

    The EXIF orientation is applied while the file is still open (TIFF keeps the tag in the
    file's own tag directory, which a plain copy of the pixels would lose).
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageLoadError(p, "file not found") from None
    except PermissionError:
        raise ImageLoadError(p, "permission denied") from None
    except OSError as exc:
        raise ImageLoadError(p, f"cannot access file ({exc.strerror or exc})") from None
    if p.is_dir():
        raise ImageLoadError(p, "is a directory, not an image file")
    if st.st_size == 0:
        raise ImageLoadError(p, "empty file (0 bytes)")
    try:
        with Image.open(p) as im:
            # Image.open is lazy; load() decodes the pixels so that a truncated or corrupt file
            # fails here, and the context manager closes the file.
            im.load()
            return _exif_upright(im, p)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(p, f"image too large ({exc})") from None
    except UnidentifiedImageError:
        raise ImageLoadError(
            p, f"not a recognised image format (file starts with {_head(p)!r})"
        ) from None
    except PermissionError:
        raise ImageLoadError(p, "permission denied") from None
    except MemoryError:
        raise ImageLoadError(p, "not enough memory to decode the image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated data as OSError("image file is truncated ..."), broken
        # headers/chunks as SyntaxError or ValueError.
        raise ImageLoadError(p, f"truncated or corrupt image data ({exc})") from None


def _head(p: Path, n: int = 8) -> bytes:
    try:
        with open(p, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _exif_upright(im: Image.Image, path: PathLike) -> Image.Image:
    """A decoded copy of ``im`` with its EXIF orientation applied (broken EXIF: logged, ignored)."""
    try:
        out = ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF must not make the image unusable
        logger.warning("ignoring unreadable EXIF orientation of %s: %s", path, exc)
        out = None
    return im.copy() if out is None or out is im else out


def _high_byte(values: np.ndarray) -> np.ndarray:
    """16-bit samples (any integer dtype, clipped to [0, 65535]) → uint8 by ``>> 8``."""
    return (np.clip(values.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit ``RGB`` (see the module docstring for the rules).

    Alpha is dropped (not composited), 16-bit samples keep their high byte, mode ``I`` is read
    as 16-bit, mode ``F`` as [0, 1]. Returns a new image (or ``image`` itself if already RGB).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        gray = _high_byte(np.asarray(image))
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
        gray = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    with warnings.catch_warnings():
        # "Palette images with Transparency expressed in bytes should be converted to RGBA":
        # dropping transparency is intended (it is what the reference does).
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        try:
            return image.convert("RGB")
        except ValueError:
            # a few rare modes (e.g. premultiplied "La") have no direct path to RGB
            return image.convert("RGBA").convert("RGB")


def load_image(path: PathLike) -> Image.Image:
    """Read an image file as an upright 8-bit RGB PIL image at its original size.

    Args:
        path: image file (any format Pillow reads: PNG, JPEG, BMP, TIFF, WebP, …).

    Returns:
        ``PIL.Image.Image`` in mode ``RGB``; ``image.size`` is the original (width, height)
        after EXIF orientation.

    Raises:
        ImageLoadError: the file is missing, empty, not an image, truncated or corrupt; the
            message names the file and the problem.
    """
    im = open_image(path)
    try:
        return to_rgb(im)
    except (OSError, ValueError) as exc:
        raise ImageLoadError(path, f"cannot convert mode {im.mode!r} to RGB ({exc})") from None


def original_hw(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image file as :func:`load_image` would return it, in pixels.

    Reads the header only (plus the EXIF orientation tag); orientations 5–8 swap the sides.

    Raises:
        ImageLoadError: as :func:`load_image`, for files whose header cannot be read.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageLoadError(p, "file not found" if not p.exists() else "not a regular file")
    try:
        with Image.open(p) as im:
            width, height = im.size
            fmt = im.format
            try:
                orientation = im.getexif().get(_ORIENTATION_TAG, 1)
            except Exception:  # noqa: BLE001 - broken EXIF: same policy as load_image
                orientation = 1
    except UnidentifiedImageError:
        reason = (
            "empty file (0 bytes)" if p.stat().st_size == 0 else "not a recognised image format"
        )
        raise ImageLoadError(p, reason) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(p, f"unreadable image header ({exc})") from None
    # Pillow's TIFF reader applies the orientation itself and already reports the upright size.
    if orientation in _TRANSPOSED_ORIENTATIONS and fmt != "TIFF":
        width, height = height, width
    return int(height), int(width)


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """HxW / HxWxC (C in 1, 3, 4) array → 8-bit L or RGB PIL image (alpha dropped)."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3:
        if arr.shape[-1] == 4:
            arr = arr[..., :3]
        elif arr.shape[-1] != 3:
            hint = (
                " (it looks channels-first: numpy arrays must be HxWxC)"
                if arr.shape[0] in (1, 3, 4)
                else ""
            )
            raise ValueError(
                f"expected an HxW, HxWx1, HxWx3 or HxWx4 array, got shape {arr.shape}{hint}"
            )
    elif arr.ndim != 2:
        raise ValueError(f"expected an HxW or HxWxC array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty image array, shape {arr.shape}")

    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16 or arr.dtype == np.dtype(">u2"):
        out = _high_byte(arr)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError("image array contains NaN or infinite values")
        out = np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"integer image array of dtype {arr.dtype} must hold 8-bit values in [0, 255] "
                f"(found [{lo}, {hi}]); pass uint16 for 16-bit data"
            )
        out = arr.astype(np.uint8)
    else:
        raise ValueError(f"unsupported image array dtype {arr.dtype}")
    out = np.ascontiguousarray(out)
    return Image.fromarray(out, mode="L" if out.ndim == 2 else "RGB")


def _tensor_to_array(t: torch.Tensor) -> np.ndarray:
    """CxHxW (C in 1, 3, 4) or HxW tensor → HxWxC / HxW numpy array (same dtype)."""
    if t.ndim == 3:
        if t.shape[0] not in (1, 3, 4):
            hint = (
                " (it looks channels-last: tensors must be CxHxW)"
                if t.shape[-1] in (1, 3, 4)
                else ""
            )
            raise ValueError(
                f"expected a CxHxW tensor with C in 1, 3, 4, got {tuple(t.shape)}{hint}"
            )
        t = t.permute(1, 2, 0)
    elif t.ndim != 2:
        raise ValueError(
            f"expected one image as a CxHxW or HxW tensor, got shape {tuple(t.shape)}"
            + (" (a batch: pass the images one at a time)" if t.ndim == 4 else "")
        )
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
        t = t.float()
    if t.dtype == torch.uint16:
        return t.contiguous().numpy().astype(np.uint16)
    return t.contiguous().numpy()


def to_pil(image: ImageInput) -> Image.Image:
    """Any supported input → 8-bit RGB PIL image (no resizing).

    Conventions:

    * ``PIL.Image.Image``: any mode, converted with :func:`to_rgb`; EXIF orientation is *not*
      applied here (use :func:`load_image` for files).
    * ``numpy.ndarray``: HxW (grey), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA, alpha dropped).
      ``uint8`` as is; ``uint16`` → high byte (``>> 8``); ``bool`` → 0/255; float arrays must
      be in [0, 1] (clipped, ×255, rounded to 8 bit); other integer dtypes must hold [0, 255].
    * ``torch.Tensor``: CxHxW (C in 1, 3, 4) or HxW, with the same dtype rules (float in
      [0, 1], ``uint8``, ``uint16``).
    """
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        image = _tensor_to_array(image)
    if isinstance(image, np.ndarray):
        return to_rgb(_array_to_pil(image))
    raise TypeError(
        f"expected a PIL image, a numpy array or a torch tensor, got {type(image).__name__}"
    )


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image (H, W) → float32 tensor (3, H, W) in [0, 1] (``/ 255``, as ToTensor)."""
    arr = np.array(to_rgb(image), dtype=np.uint8, copy=True)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().float().div_(255.0)


def preprocess(image: ImageInput, size: int) -> torch.Tensor:
    """The model's input transform: RGB, bilinear resize to ``size``×``size``, [0, 1] float.

    Args:
        image: a PIL image, a numpy array or a tensor (conventions in :func:`to_pil`).
        size: side S of the square output, in pixels (TipsOmaly uses 518).

    Returns:
        float32 tensor of shape (3, S, S), values in [0, 1], no mean/std normalisation.
    """
    size = _check_size(size)
    rgb = to_pil(image)
    return pil_to_tensor(rgb.resize((size, size), Image.Resampling.BILINEAR))


def load_tensor(path: PathLike, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`load_image` then :func:`preprocess`.

    Returns:
        (tensor (3, S, S) float32 in [0, 1], original (height, width) in pixels).

    Raises:
        ImageLoadError: see :func:`load_image`.
    """
    img = load_image(path)
    return preprocess(img, size), (img.height, img.width)


def binarize_mask_image(image: Image.Image) -> np.ndarray:
    """Ground-truth mask image (any mode) → bool array (H, W): ``convert("L") > 0``.

    Like the reference, colour masks go through Pillow's luma conversion first (a pure dark
    blue pixel of value < 5 would round to 0); 16-bit masks keep every non-zero pixel.
    """
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return np.asarray(image) > 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        return np.asarray(image.convert("L")) > 0


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """Binary mask (H, W) → float32 tensor (S, S) in {0, 1}, by the reference's rule.

    The mask is written as a 0/255 ``L`` image, resized with PIL bilinear to S×S and
    thresholded at 0.5 (a resized value ``v`` counts as anomalous when ``v / 255 > 0.5``).
    """
    size = _check_size(size)
    binary = np.asarray(mask).astype(bool)
    if binary.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {binary.shape}")
    im = Image.fromarray(binary.astype(np.uint8) * 255, mode="L")
    resized = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))
    return torch.from_numpy((resized > 127).astype(np.float32))


def load_mask(path: PathLike | None, size: int | None) -> torch.Tensor:
    """Read a ground-truth mask as a float {0, 1} tensor.

    Args:
        path: mask file, or ``None`` for a normal image (an all-zero mask is returned).
        size: side S of the square output; ``None`` keeps the original resolution (then
            ``path`` must be given).

    Returns:
        float32 tensor (S, S) — or (H, W) at the original size — holding 0.0 and 1.0 only.
        Any non-zero pixel of the file counts as anomalous before resizing; after a bilinear
        resize the 0.5 threshold decides (see :func:`resize_mask`).

    Raises:
        ImageLoadError: the mask file cannot be read.
        ValueError: both ``path`` and ``size`` are ``None``.
    """
    if path is None:
        if size is None:
            raise ValueError("load_mask(None, None): give a size for the all-zero mask")
        size = _check_size(size)
        return torch.zeros((size, size), dtype=torch.float32)
    im = open_image(path)
    try:
        binary = binarize_mask_image(im)
    except (OSError, ValueError) as exc:
        raise ImageLoadError(path, f"cannot read mode {im.mode!r} as a mask ({exc})") from None
    if size is None:
        return torch.from_numpy(binary.astype(np.float32))
    return resize_mask(binary, size)


def is_image_file(path: PathLike) -> bool:
    """True when ``path`` has an image extension (case-insensitive) and is not a hidden file."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
