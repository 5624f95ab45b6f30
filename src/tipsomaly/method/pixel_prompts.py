"""Learned pixel prompts: the normal/abnormal preambles, their safetensors files, named bundles."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..errors import TipsomalyError, one_line
from ..files import atomic_path
from .names import BUNDLED_PIXEL_PROMPTS
from .torch_pickle import read_torch_file

logger = logging.getLogger(__name__)

# Names users can type for the prompts that ship with the package (the authors' release).
BUNDLED = BUNDLED_PIXEL_PROMPTS


class PixelPromptError(TipsomalyError, ValueError):
    """A pixel-prompt file is unreadable or does not fit the backbone."""


@dataclass
class PixelPrompts:
    """Learned preambles, (2, n_prompt, D) fp32: ``[0]`` normal, ``[1]`` abnormal.

    ``metadata`` records where they come from (backbone, width, n_prompt, prompt type, training
    data, epochs, ...), as strings.
    """

    preambles: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_preambles(self.preambles, self.metadata.get("source") or "pixel prompts")

    @property
    def n_prompt(self) -> int:
        return int(self.preambles.shape[1])

    @property
    def width(self) -> int:
        return int(self.preambles.shape[2])

    @classmethod
    def init_random(
        cls, n_prompt: int, width: int, std: float = 0.02, generator: torch.Generator | None = None
    ) -> PixelPrompts:
        """N(0, std²) initialisation, as the paper trains them."""
        preambles = torch.randn(2, n_prompt, width, generator=generator) * std
        return cls(preambles, {"n_prompt": str(n_prompt), "width": str(width)})

    def check_width(self, width: int, backbone: str = "the backbone") -> None:
        if self.width != width:
            source = self.metadata.get("source") or self.metadata.get("backbone", "these prompts")
            raise PixelPromptError(
                f"pixel prompts of width {self.width} ({source}) do not fit {backbone} of width "
                f"{width}: use prompts trained for this backbone, or train some with "
                "`tipsomaly train`"
            )

    def save(self, path: str | os.PathLike, **metadata: object) -> Path:
        """Write a ``.safetensors`` file (tensor ``preambles``) with string metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.metadata, **{k: str(v) for k, v in metadata.items()}}
        meta.update(
            n_prompt=str(self.n_prompt), width=str(self.width), format="tipsomaly-pixel-prompts-1"
        )
        tensors = {"preambles": self.preambles.detach().float().contiguous().cpu()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PixelPrompts:
        """Read a ``.safetensors`` file written by :meth:`save`."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise PixelPromptError(f"pixel prompt file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                if "preambles" not in keys:
                    shown = ", ".join(repr(k) for k in keys[:5]) or "nothing"
                    raise PixelPromptError(f"{path} holds no 'preambles' tensor, only {shown}")
                preambles = f.get_tensor("preambles")
                metadata = dict(f.metadata() or {})
        except PixelPromptError:
            raise
        except (SafetensorError, OSError, ValueError) as exc:
            raise PixelPromptError(
                f"{path} is not a readable safetensors file: {one_line(exc)}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - e.g. a dtype torch cannot hold (F4, U64)
            raise PixelPromptError(f"{path}: unreadable pixel prompts ({one_line(exc)})") from None
        except BaseException as exc:  # a panic inside the Rust reader, never a user's ^C
            if type(exc).__name__ != "PanicException":
                raise
            raise PixelPromptError(f"{path}: unreadable pixel prompts ({one_line(exc)})") from None
        check_preambles(preambles, str(path))
        metadata.setdefault("source", str(path))
        return cls(preambles.float(), metadata)

    @classmethod
    def from_reference_pth(cls, path: str | os.PathLike, **metadata: object) -> PixelPrompts:
        """Import the TipsOmaly authors' ``.pth`` (a ParameterList of [normal, abnormal]).

        Read without executing anything from the pickle (see :mod:`.torch_pickle`).
        """
        tree = read_torch_file(path)
        if isinstance(tree, dict) and "learnable_prompts" in tree:
            tree = tree["learnable_prompts"]
        if isinstance(tree, dict):
            keys = sorted(tree, key=lambda k: int(k) if str(k).isdigit() else str(k))
            items = [tree[k] for k in keys]
        elif isinstance(tree, (list, tuple)):
            items = list(tree)
        else:
            raise PixelPromptError(f"{path}: unexpected content {type(tree).__name__}")
        if len(items) != 2 or not all(isinstance(a, np.ndarray) and a.ndim == 2 for a in items):
            raise PixelPromptError(f"{path}: expected two (n_prompt, D) tensors [normal, abnormal]")
        if items[0].shape != items[1].shape:
            raise PixelPromptError(
                f"{path}: the normal and abnormal prompts differ in shape "
                f"({items[0].shape} vs {items[1].shape})"
            )
        if not all(np.issubdtype(a.dtype, np.floating) for a in items):
            kinds = ", ".join(str(a.dtype) for a in items)
            raise PixelPromptError(f"{path}: prompts must be floating point, got {kinds}")
        preambles = torch.from_numpy(np.stack(items).astype(np.float32))
        check_preambles(preambles, str(path))
        meta = {"source": Path(path).name, **{k: str(v) for k, v in metadata.items()}}
        return cls(preambles, meta)


def check_preambles(preambles: torch.Tensor, source: str) -> None:
    """Refuse preambles that are not (2, n_prompt, D) floating point and finite.

    ``source`` (a file name, or a description) starts the :class:`PixelPromptError` message.
    """
    p = preambles
    if p.ndim != 3 or p.shape[0] != 2 or p.shape[1] < 1 or p.shape[2] < 1:
        raise PixelPromptError(
            f"{source}: pixel prompts must have shape (2, n_prompt, D), got {tuple(p.shape)}"
        )
    if not p.is_floating_point():
        raise PixelPromptError(f"{source}: pixel prompts must be floating point, got {p.dtype}")
    bad = int((~torch.isfinite(p.float())).sum())  # as used: fp32 (1e300 in fp64 is inf)
    if bad:
        raise PixelPromptError(
            f"{source}: {bad} of {p.numel()} pixel-prompt values are NaN or infinite; "
            "use other prompts or train them again"
        )


def bundled_path(name: str) -> Path:
    return Path(str(resources.files("tipsomaly.resources") / "pixel_prompts" / BUNDLED[name]))


def load_pixel_prompts(spec: str | os.PathLike | PixelPrompts) -> PixelPrompts:
    """Pixel prompts from a bundled name (``trained-on-mvtec``), a .safetensors or a .pth file."""
    if isinstance(spec, PixelPrompts):
        return spec
    name = str(spec)
    if name in BUNDLED:
        return PixelPrompts.load(bundled_path(name))
    path = Path(spec)
    if path.suffix in (".pth", ".pt"):
        return PixelPrompts.from_reference_pth(path)
    if not path.exists() and path.suffix == "":
        raise PixelPromptError(
            f"no pixel prompts called {name!r}; bundled: {', '.join(BUNDLED)}, or give a "
            ".safetensors / .pth file"
        )
    return PixelPrompts.load(path)
