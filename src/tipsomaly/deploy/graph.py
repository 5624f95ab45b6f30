"""The graph an export holds: :class:`ExportModule`, TipsOmaly at one fixed image size.

An :class:`ExportModule` is a :class:`~tipsomaly.method.head.TipsomalyHead` made ready to be
traced into a file that runs without PyTorch (ONNX, OpenVINO):

- the vision tower runs at one side S, with its positional embedding computed once, in
  eager PyTorch, for the S/p × S/p patch grid (:class:`FixedSizeVision`): the antialiased
  resize of :meth:`~tipsomaly.tips.vision.VisionTransformer.interpolate_pos_embed` is never
  traced, and the stored embedding is bit-identical to the one eager inference uses;
- one class: its [normal, abnormal] text embeddings (and the learned pixel prompts' ones)
  are buffers, computed by the text tower before export, so the text tower is not exported;
- a few-shot profile's memory banks are buffers too (:class:`GraphBank`: the whole batch's
  queries against fixed blocks of the bank, so the batch size stays a free dimension), and
  its calibrated thresholds give the extra outputs ``pred_label`` / ``pred_mask``;
- fp32 throughout: the vision tower must compute in fp32 (no ``set_compute_dtype`` casts).

``forward(images)`` takes (B, 3, S, S) float32 images in [0, 1] and returns a tuple in the
order of :attr:`ExportModule.output_names`: the fields of
:class:`~tipsomaly.method.head.DetectorOutput` (``image_score``, ``score_cls1``, ``score_cls2``
(B,), ``anomaly_map`` (B, S, S), ``global_cls1``, ``global_cls2`` (B,), ``patch_evidence``
(B, N)) and, with thresholds, ``pred_label`` (B,) / ``pred_mask`` (B, S, S) bool, decided by
:func:`~tipsomaly.method.decision.decide` as everywhere else. The evidence outputs are what
lets the pipeline apply regions of interest and tiles around the graph.
"""

from __future__ import annotations

import torch
from torch import nn

from ..method.decision import decide
from ..method.detector import Detector
from ..method.head import DetectorOutput, TipsomalyHead
from ..method.memory_bank import MemoryBank, ReferenceBank
from ..tips.model import TipsModel
from ..tips.vision import VisionTransformer

__all__ = [
    "FEATURE_NAMES",
    "INPUT_NAME",
    "SCORE_NAMES",
    "ExportModule",
    "FixedSizeVision",
    "GraphBank",
]

#: the graph's one input
INPUT_NAME = "images"
#: the outputs every export has, in order; ``pred_label`` / ``pred_mask`` follow with thresholds
SCORE_NAMES = DetectorOutput._fields
#: the vision tower's outputs an int8 export with a profile adds (its thresholds are
#: recalibrated on the features the quantized tower gives): cls1 (B, D), cls2 (B, D),
#: patches (B, N, D), after the final LayerNorm
FEATURE_NAMES = ("features_cls1", "features_cls2", "features_patches")
#: bank entries compared at a time in :class:`GraphBank` (bounds the similarity matrix)
BANK_BLOCK = 4096


class FixedSizeVision(VisionTransformer):
    """A vision tower that runs at one grid only, its positional embedding precomputed.

    Shares every parameter and submodule with ``vision`` (no copy); adds the buffer
    ``fixed_pos_embed`` (1, 1 + g_h·g_w, D): ``vision.interpolate_pos_embed(g_h, g_w)``
    computed now. Another grid is refused.
    """

    fixed_pos_embed: torch.Tensor

    def __init__(self, vision: VisionTransformer, grid: tuple[int, int]) -> None:
        nn.Module.__init__(self)  # the tower's own __init__ would allocate new weights
        self.config = vision.config
        self.patch_size = vision.patch_size
        self.num_register_tokens = vision.num_register_tokens
        for name, param in vision.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, child in vision.named_children():
            self.add_module(name, child)
        self._pos_cache = {}
        self.grid = (int(grid[0]), int(grid[1]))
        with torch.no_grad():
            pos = vision.interpolate_pos_embed(*self.grid).detach().clone()
        self.register_buffer("fixed_pos_embed", pos)

    def interpolate_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        if (grid_h, grid_w) != self.grid:
            raise ValueError(
                f"this tower runs on a {self.grid[0]}×{self.grid[1]} patch grid only, "
                f"got {grid_h}×{grid_w}"
            )
        return self.fixed_pos_embed


class GraphBank(MemoryBank):
    """A :class:`MemoryBank` whose search traces into a graph with a free batch size.

    :meth:`MemoryBank.forward` blocks the queries too (a Python loop over their count,
    which a trace would fix); here all queries meet each block of at most ``BANK_BLOCK``
    entries at once, the block bounds being fixed by the bank's size. Same distances,
    ``1 − max cos``, to rounding of the matrix products; no leave-one-out.
    """

    def forward(self, queries: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        if exclude is not None:
            raise ValueError("an exported bank has no leave-one-out (exclude must be None)")
        q = nn.functional.normalize(queries.float(), dim=-1)
        best: torch.Tensor | None = None
        for j in range(0, len(self), BANK_BLOCK):
            sims = (q @ self.features[j : j + BANK_BLOCK].T).amax(dim=-1)
            best = sims if best is None else torch.maximum(best, sims)
        assert best is not None
        return 1.0 - best.clamp(-1.0, 1.0)


def graph_bank(bank: ReferenceBank) -> ReferenceBank:
    """A profile's :class:`ReferenceBank` with its three banks as :class:`GraphBank` s
    (the same tensors: features are already unit-length)."""

    def convert(b: MemoryBank) -> GraphBank:
        return GraphBank(b.features, b.sources, normalized=True)

    return ReferenceBank(convert(bank.patches), convert(bank.cls1), convert(bank.cls2))


class ExportModule(nn.Module):
    """TipsOmaly for one class at one image size, as one exportable module.

    Args:
        model: the TIPS model (its vision tower must compute in fp32).
        class_text: (2, D) or (1, 2, D) [normal, abnormal] embeddings of the class.
        pixel_text: (2, D) learned pixel-prompt embeddings, or ``None``.
        image_size: side S of the input images (a multiple of the patch size).
        sigma, cls: as in :class:`TipsomalyHead`.
        references: a profile's :class:`ReferenceBank`, or ``None`` (zero-shot).
        mode: ``"zero-shot"``, ``"few-shot"`` or ``"fused"`` (with ``references``).
        image_threshold, pixel_threshold: calibrated thresholds; each one given adds an
            output (``pred_label`` = ``image_score >= t``, ``pred_mask`` = ``map >= t``).
        features: also output the vision tower's features (:data:`FEATURE_NAMES`).

    Raises:
        ValueError: a size that is no multiple of the patch size, a tower not in fp32.
    """

    image_threshold: torch.Tensor | None
    pixel_threshold: torch.Tensor | None

    def __init__(
        self,
        model: TipsModel,
        class_text: torch.Tensor,
        pixel_text: torch.Tensor | None = None,
        *,
        image_size: int,
        sigma: float = 4.0,
        cls: str = "cls1",
        references: ReferenceBank | None = None,
        mode: str = "zero-shot",
        image_threshold: float | None = None,
        pixel_threshold: float | None = None,
        features: bool = False,
    ) -> None:
        super().__init__()
        p = model.patch_size
        if image_size <= 0 or image_size % p:
            raise ValueError(f"image_size must be a positive multiple of {p}, got {image_size}")
        if model.compute_dtype != torch.float32:
            raise ValueError(
                f"the vision tower computes in {model.compute_dtype}; an export is fp32 "
                "(load the model without a dtype)"
            )
        if class_text.ndim == 3 and class_text.shape[0] != 1:
            raise ValueError(f"one class per export, got {class_text.shape[0]}")
        self.image_size = int(image_size)
        head = TipsomalyHead(model, class_text, pixel_text, sigma=sigma, cls=cls)
        head.vision = FixedSizeVision(model.vision, (image_size // p, image_size // p))
        if references is not None:
            head.set_references(graph_bank(references), mode)
        elif mode != "zero-shot":
            raise ValueError(f"mode {mode!r} needs references (a profile)")
        self.head = head.eval()
        self.mode = head.mode
        self.features = bool(features)
        self.register_buffer("image_threshold", _scalar(image_threshold))
        self.register_buffer("pixel_threshold", _scalar(pixel_threshold))

    @classmethod
    def from_detector(
        cls,
        detector: Detector,
        class_name: str,
        *,
        calibrated: bool = True,
        features: bool = False,
    ) -> ExportModule:
        """The module of ``class_name`` as ``detector`` scores it: its text embeddings, image
        size, sigma, CLS token and, when the detector holds a profile of that class, the
        profile's bank (unless the detector's mode is zero-shot); the thresholds it decides
        by (:meth:`~tipsomaly.method.pipeline.Predictor.decision`); ``calibrated=False``
        leaves out the profile's calibrated ones (thresholds given in the config stay), for a
        graph whose thresholds are recalibrated after it is made (int8).

        Raises:
            ValueError: the detector's vision tower is not fp32.
        """
        profile = detector.profiles.get(class_name)
        mode, image, pixel, _ = detector.decision(class_name)
        if not calibrated:
            image, pixel = detector.config.image_threshold, detector.config.pixel_threshold
        return cls(
            detector.model,
            detector.class_text(class_name),
            detector.pixel_text(),
            image_size=detector.image_size,
            sigma=detector.sigma,
            cls=detector.cls,
            references=profile.bank if profile is not None and mode != "zero-shot" else None,
            mode=mode,
            image_threshold=image,
            pixel_threshold=pixel,
            features=features,
        )

    @property
    def output_names(self) -> tuple[str, ...]:
        names = SCORE_NAMES
        if self.image_threshold is not None:
            names += ("pred_label",)
        if self.pixel_threshold is not None:
            names += ("pred_mask",)
        return names + (FEATURE_NAMES if self.features else ())

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """Random (batch, 3, S, S) images in [0, 1], to trace with."""
        gen = torch.Generator().manual_seed(0)
        return torch.rand(batch, 3, self.image_size, self.image_size, generator=gen)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, S, S) float32 images in [0, 1] → the outputs named by :attr:`output_names`."""
        features = self.head.vision(images)
        out = self.head.features_output(features, (self.image_size, self.image_size))
        outputs = tuple(out)
        if self.image_threshold is not None:
            outputs += (decide(out.image_score, self.image_threshold),)
        if self.pixel_threshold is not None:
            outputs += (decide(out.anomaly_map, self.pixel_threshold),)
        if self.features:
            outputs += (features.cls1[:, 0], features.cls2[:, 0], features.patches)
        return outputs


def _scalar(value: float | None) -> torch.Tensor | None:
    return None if value is None else torch.tensor(float(value), dtype=torch.float32)
