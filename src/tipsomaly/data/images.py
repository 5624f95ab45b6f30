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

* **Pixel limit.** A file whose header declares more than ``max_pixels`` pixels (default
  :data:`DEFAULT_MAX_PIXELS`, 100 megapixels; each call may set its own, as
  :class:`~tipsomaly.method.config.DetectorConfig`'s ``max_pixels`` does; ``None`` = no limit)
  is refused before any pixel is decoded, with an :class:`ImageLoadError` naming the file, its
  size and the limit. A tiny compressed file can declare a huge image (a 164 KB PNG of
  13000×13000 px decodes to 0.5 GB of RGB and needs several GB downstream). Pillow's own
  decompression-bomb warning and error never escape: the error becomes the same
  :class:`ImageLoadError`.
* **Failures.** Every per-file failure (missing, unreadable, not an image, truncated, too large,
  out of memory, a name the file system cannot encode) is an :class:`ImageLoadError` for that
  file, so a batch goes on. Messages describe the problem and never quote the file's content.

Sizes: ``size`` arguments are the side S of the square model input, in pixels. Original sizes
are reported as ``(height, width)`` (the order ``torch.nn.functional.interpolate`` wants).

PyTorch is imported only by the functions that take or return tensors, so scanning folders and
reading images (:func:`is_image_file`, :func:`load_image`, :func:`open_image`) does not load it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Final, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import TipsomalyError
from .names import display_path

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
# Union with a string: ``torch.Tensor`` is named without importing torch.
ImageInput = Union[Image.Image, np.ndarray, "torch.Tensor"]  # noqa: UP007

#: File extensions (lower case) treated as images when scanning folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: Default largest image accepted, in pixels (width × height, read from the header before
#: decoding): 100 megapixels. That covers every camera sensor in industrial and medical use
#: (a 61 MP full-frame still, an 8K frame = 33 MP, a 16k line-scan strip of 6000 lines = 98 MP),
#: while bounding what one image costs downstream: 0.3 GB of decoded RGB and about 1 GB for
#: ``predict``'s original-size map and overlay. Pillow warns at 89.5 MP and refuses 179 MP;
#: tipsomaly's limit replaces both. Change it with ``max_pixels=`` (no process-wide setting).
DEFAULT_MAX_PIXELS: Final[int] = 100_000_000

# Pillow's decompression-bomb check lives in process-wide state (``Image.MAX_IMAGE_PIXELS`` and
# the warnings filters); tipsomaly's own changes to either happen under this lock only.
_PIL_STATE_LOCK = threading.RLock()


#: a pixel limit: a count of pixels, or None for no limit
MaxPixels = int | None

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ORIENTATION_TAG = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # these swap width and height
_APPLIED_ORIENTATIONS = (2, 3, 4, 5, 6, 7, 8)  # 1 (or none): already upright


def resolve_max_pixels(limit: MaxPixels = DEFAULT_MAX_PIXELS) -> int | None:
    """The limit a call applies: ``limit`` checked (ValueError: not a positive integer or
    ``None``)."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"max_pixels must be a positive integer or None, got {limit!r}")
    return int(limit)


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels"


class ImageLoadError(TipsomalyError, OSError):
    """An image or mask file could not be read.

    The message is ``cannot load image 'PATH': reason``, the path shown with
    :func:`display_path` (so it can always be written to a UTF-8 table). An ``OSError`` too
    (a file that cannot be read), as every tipsomaly error keeps its builtin base; its
    ``errno``, ``strerror`` and ``filename`` are None (``path`` names the file), so that its
    ``str`` stays the message.

    Attributes:
        path: the file.
        reason: a short, human-readable description of the problem.
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot load image '{display_path(self.path)}': {reason}")

    def __reduce__(self):  # keep it picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer (the side of the square), got {size!r}")
    return int(size)


def open_image(path: PathLike, *, max_pixels: MaxPixels = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode and orient ``path``, keeping its mode (no colour conversion);
    ``max_pixels`` as for :func:`load_image`.

    Raises:
        ImageLoadError: any failure (see the module doc), naming the file and the problem.

    The EXIF orientation is applied while the file is still open (TIFF keeps the tag in the
    file's own tag directory, which a plain copy of the pixels would lose).
    """
    p = Path(path)
    limit = resolve_max_pixels(max_pixels)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageLoadError(p, "file not found") from None
    except PermissionError:
        raise ImageLoadError(p, "permission denied") from None
    except OSError as exc:
        raise ImageLoadError(p, f"cannot access file ({exc.strerror or exc})") from None
    except ValueError as exc:  # embedded NUL, a name the file system cannot encode
        raise ImageLoadError(p, f"invalid file name ({exc})") from None
    if p.is_dir():
        raise ImageLoadError(p, "is a directory, not an image file")
    if st.st_size == 0:
        raise ImageLoadError(p, "empty file (0 bytes)")
    try:
        with _open_checked(p, limit) as im:
            # Image.open is lazy; load() decodes the pixels so that a truncated or corrupt file
            # fails here, and the context manager closes the file.
            im.load()
            return _exif_upright(im, p)
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted input: every failure is this file's
        raise ImageLoadError(p, _decode_failure(exc)) from None


def _decode_failure(exc: BaseException) -> str:
    """A short reason for an exception raised while decoding (never the file's content)."""
    if isinstance(exc, MemoryError):
        return "not enough memory to decode the image"
    if isinstance(exc, Image.DecompressionBombError):
        return "image too large (over Pillow's decompression-bomb limit)"
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format (its first bytes match no format Pillow reads)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        # Pillow reports truncated data as OSError("image file is truncated ..."), broken
        # headers/chunks as SyntaxError or ValueError.
        return f"truncated or corrupt image data ({_short(exc)})"
    return f"cannot decode the image ({type(exc).__name__}: {_short(exc)})"


def _short(exc: BaseException, limit: int = 200) -> str:
    """``str(exc)`` (an OSError's ``strerror``) made printable and cut to ``limit`` characters."""
    strerror = exc.strerror if isinstance(exc, OSError) else None
    text = display_path(str(strerror or exc))
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _open_checked(p: Path, limit: int | None) -> Image.Image:
    """``Image.open(p)`` (lazy, header only) refusing more than ``limit`` pixels.

    Pillow's decompression-bomb warning is silenced (this check replaces it). Pillow's own
    limit is lifted, under :data:`_PIL_STATE_LOCK`, only to read the header of a file that
    Pillow refuses (to report its size) or that ``limit`` allows beyond Pillow's threshold.
    """
    with _PIL_STATE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        lift = saved is not None and (limit is None or limit > 2 * saved)
        try:
            if lift:
                Image.MAX_IMAGE_PIXELS = None
            try:
                im = Image.open(p)
            except Image.DecompressionBombError:
                Image.MAX_IMAGE_PIXELS = None
                im = Image.open(p)  # the header again, for its size; refused below
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = im.size
    if limit is not None and width * height > limit:
        im.close()
        raise ImageLoadError(
            p,
            f"image too large: {width}×{height} = {_megapixels(width * height)}, over the limit "
            f"of {limit:,} pixels ({_megapixels(limit)}; max_pixels)",
        )
    return im


def _exif_upright(im: Image.Image, path: PathLike) -> Image.Image:
    """The decoded ``im`` with its EXIF orientation applied (broken EXIF: logged, ignored).

    Without an orientation to apply, ``im`` itself is returned (no second full-size copy),
    unless Pillow memory-mapped the file (uncompressed formats): then a copy, so that the
    pixels never depend on a file that may change.
    """
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
        out = ImageOps.exif_transpose(im) if orientation in _APPLIED_ORIENTATIONS else None
    except Exception as exc:  # noqa: BLE001 - malformed EXIF must not make the image unusable
        logger.warning("ignoring unreadable EXIF orientation of %s: %s", display_path(path), exc)
        out = None
    if out is not None and out is not im:
        return out
    return im.copy() if getattr(im, "map", None) is not None or im.readonly else im


def _high_byte(values: np.ndarray) -> np.ndarray:
    """16-bit samples (any integer dtype, clipped to [0, 65535]) → uint8 by ``>> 8``."""
    return (np.clip(values.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """A PIL image of any mode as 8-bit ``RGB`` by the module doc's rules (``image`` itself if
    already RGB)."""
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
    with _PIL_STATE_LOCK, warnings.catch_warnings():
        # "Palette images with Transparency expressed in bytes should be converted to RGBA":
        # dropping transparency is intended (it is what the reference does). The warnings
        # filters are process-wide: changed under the lock only (images load in threads).
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        try:
            return image.convert("RGB")
        except ValueError:
            # a few rare modes (e.g. premultiplied "La") have no direct path to RGB
            return image.convert("RGBA").convert("RGB")


def load_image(path: PathLike, *, max_pixels: MaxPixels = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An image file (any format Pillow reads) as an upright 8-bit RGB PIL image at its
    original size. ``max_pixels``: largest width × height accepted (checked before decoding);
    ``None``: no limit.

    Raises:
        ImageLoadError: the file is missing, empty, unreadable, not an image, over the pixel
            limit, truncated or corrupt, or needs more memory than there is; the message names
            the file and the problem.
    """
    im = open_image(path, max_pixels=max_pixels)
    try:
        return to_rgb(im)
    except MemoryError:
        raise ImageLoadError(path, "not enough memory to convert the image to RGB") from None
    except Exception as exc:  # noqa: BLE001 - a per-file failure must not stop a batch
        raise ImageLoadError(
            path, f"cannot convert mode {im.mode!r} to RGB ({_short(exc)})"
        ) from None


def original_hw(path: PathLike, *, max_pixels: MaxPixels = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of an image file as :func:`load_image` would return it, in pixels.

    Reads the header only (plus the EXIF orientation tag); orientations 5–8 swap the sides.

    Raises:
        ImageLoadError: as :func:`load_image`, for files whose header cannot be read or that
            are over ``max_pixels``.
    """
    p = Path(path)
    limit = resolve_max_pixels(max_pixels)
    try:
        if not p.is_file():
            raise ImageLoadError(p, "file not found" if not p.exists() else "not a regular file")
        if p.stat().st_size == 0:
            raise ImageLoadError(p, "empty file (0 bytes)")
        with _open_checked(p, limit) as im:
            width, height = im.size
            fmt = im.format
            try:
                orientation = im.getexif().get(_ORIENTATION_TAG, 1)
            except Exception:  # noqa: BLE001 - broken EXIF: same policy as load_image
                orientation = 1
    except ImageLoadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageLoadError(p, _decode_failure(exc)) from None
    except (ValueError, UnicodeError) as exc:  # embedded NUL, unencodable name
        raise ImageLoadError(p, f"invalid file name ({_short(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - a per-file failure must not stop a batch
        raise ImageLoadError(p, f"unreadable image header ({_short(exc)})") from None
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
            first = arr.shape[0] in (1, 3, 4)
            hint = " (it looks channels-first: numpy arrays must be HxWxC)" if first else ""
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
    import torch

    if t.ndim == 3:
        if t.shape[0] not in (1, 3, 4):
            last = t.shape[-1] in (1, 3, 4)
            hint = " (it looks channels-last: tensors must be CxHxW)" if last else ""
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
    torch_module = sys.modules.get("torch")  # torch not imported: ``image`` is no tensor
    if torch_module is not None and isinstance(image, torch_module.Tensor):
        image = _tensor_to_array(image)
    if isinstance(image, np.ndarray):
        return to_rgb(_array_to_pil(image))
    raise TypeError(
        f"expected a PIL image, a numpy array or a torch tensor, got {type(image).__name__}"
    )


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image (H, W) → float32 tensor (3, H, W) in [0, 1] (``/ 255``, as ToTensor)."""
    import torch

    arr = np.array(to_rgb(image), dtype=np.uint8, copy=True)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().float().div_(255.0)


def preprocess(image: ImageInput, size: int) -> torch.Tensor:
    """The model's input transform of ``image`` (conventions in :func:`to_pil`): RGB, bilinear
    resize to S×S (``size``), float32 (3, S, S) in [0, 1], no mean/std normalisation."""
    size = _check_size(size)
    rgb = to_pil(image)
    return pil_to_tensor(rgb.resize((size, size), Image.Resampling.BILINEAR))


def load_tensor(
    path: PathLike, size: int, *, max_pixels: MaxPixels = DEFAULT_MAX_PIXELS
) -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`load_image` then :func:`preprocess`: (tensor (3, S, S), original (height,
    width)); ImageLoadError as :func:`load_image`."""
    img = load_image(path, max_pixels=max_pixels)
    return preprocess(img, size), (img.height, img.width)


def binarize_mask_image(image: Image.Image) -> np.ndarray:
    """Ground-truth mask image (any mode) → bool array (H, W): ``convert("L") > 0``.

    Like the reference, colour masks go through Pillow's luma conversion first (a pure dark
    blue pixel of value < 5 would round to 0); 16-bit masks keep every non-zero pixel.
    """
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return np.asarray(image) > 0
    with _PIL_STATE_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        return np.asarray(image.convert("L")) > 0


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """Binary mask (H, W) → float32 tensor (S, S) in {0, 1}, by the reference's rule.

    The mask is written as a 0/255 ``L`` image, resized with PIL bilinear to S×S and
    thresholded at 0.5 (a resized value ``v`` counts as anomalous when ``v / 255 > 0.5``).
    """
    import torch

    size = _check_size(size)
    binary = np.asarray(mask).astype(bool)
    if binary.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {binary.shape}")
    im = Image.fromarray(binary.astype(np.uint8) * 255, mode="L")
    resized = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))
    return torch.from_numpy((resized > 127).astype(np.float32))


def load_mask(
    path: PathLike | None, size: int | None, *, max_pixels: MaxPixels = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """A ground-truth mask file as a float32 {0, 1} tensor (S, S), or (H, W) with ``size``
    None; ``path`` None: an all-zero mask (a normal image). Any non-zero pixel is anomalous
    before resizing, then :func:`resize_mask`'s 0.5 threshold decides.

    Raises:
        ImageLoadError: the mask file cannot be read.
        ValueError: both ``path`` and ``size`` are ``None``.
    """
    import torch

    if path is None:
        if size is None:
            raise ValueError("load_mask(None, None): give a size for the all-zero mask")
        size = _check_size(size)
        return torch.zeros((size, size), dtype=torch.float32)
    im = open_image(path, max_pixels=max_pixels)
    try:
        binary = binarize_mask_image(im)
    except MemoryError:
        raise ImageLoadError(path, "not enough memory to read the mask") from None
    except Exception as exc:  # noqa: BLE001 - a per-file failure must not stop a batch
        raise ImageLoadError(
            path, f"cannot read mode {im.mode!r} as a mask ({_short(exc)})"
        ) from None
    if size is None:
        return torch.from_numpy(binary.astype(np.float32))
    return resize_mask(binary, size)


def is_image_file(path: PathLike) -> bool:
    """True when ``path`` has an image extension (case-insensitive) and is not a hidden file."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
