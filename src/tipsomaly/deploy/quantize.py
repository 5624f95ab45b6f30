"""Int8 graphs: post-training static quantization of an exported fp32 ONNX graph.

Two engines, each with its own toolkit (the quantized numerics are runtime-specific, so an
int8 export runs on the runtime it was quantized for):

- OpenVINO: :func:`quantize_openvino`, NNCF's ``nncf.quantize`` on the OpenVINO model
  converted from the ONNX graph, with the transformer preset (``ModelType.TRANSFORMER``:
  SmoothQuant on the linear layers' inputs, no quantizers on the ops that break with them)
  and fast bias correction, as OpenVINO's CLIP tutorials and anomalib's OpenVINO path do;
- ONNX Runtime: :func:`quantize_onnxruntime`, ``onnxruntime.quantization.quantize_static``
  in the QDQ format (uint8 activations, int8 per-channel weights, MinMax calibration), fed by
  a :class:`CalibrationDataReader`.

Only the vision tower's transformer blocks are quantized (:func:`quantized_nodes`,
:func:`fp32_nodes`); the rest stays fp32 (the ignored scope):

- the patch embedding: the image's own pixels, where an int8 step is a visible change of
  texture (quantized by mistake once on OpenVINO, it cost 0.025 of few-shot image AUROC);

- the final LayerNorm of the tower: the CLS tokens and patch tokens it gives are compared by
  cosine with the text embeddings and the memory bank, where a 1 % error moves the scores;
- the head: the patch-text and CLS-text similarities are scaled by the logit scale (100)
  before their softmax, so an int8 step of the cosine (~1/127 of its range) would change the
  probabilities by up to ~0.5; the memory-bank search is ``1 − max cos`` of unit vectors whose
  interesting distances are ~1e-2, below an int8 step; the Gaussian smoothing and upsampling
  of the maps are cheap and gain nothing;
- on ONNX Runtime, the attention's own matrix products (query·key and attention·value: both
  operands are activations, and the softmax between them is the op transformers lose most to
  in int8). OpenVINO fuses attention into one ``ScaledDotProductAttention`` op whose query,
  key and value NNCF's transformer preset quantizes: measured at B/14, 518 px, that is 13 %
  faster than keeping it fp32 with no larger error (max map error 6.6e-3 against 6.9e-3), and
  the few-shot image AUROC stays within 0.0004 of fp32.

Nothing here imports a runtime at import time.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import require

logger = logging.getLogger(__name__)

__all__ = [
    "FP32_SCOPE",
    "RECIPE",
    "calibration_batches",
    "fp32_nodes",
    "quantize",
    "quantize_onnxruntime",
    "quantize_openvino",
    "quantized_nodes",
    "quiet",
    "spearman",
]

#: where the quantized ops live: the vision tower's transformer blocks (torch's exporter
#: records each ONNX node's module path in its ``namespace`` metadata)
QUANTIZED_SCOPE = "head.vision.blocks."
#: said in export.json: what stays fp32 and why (see the module doc)
FP32_SCOPE = (
    "only the vision tower's transformer blocks are int8 (their linear layers; on OpenVINO "
    "also the fused attention's query, key and value); fp32 stay the patch embedding, the "
    "final LayerNorm, the text and CLS similarities with their softmax at logit scale 100, the "
    "memory-bank search (1 - max cos) and the map smoothing"
)
#: the quantization recipe's revision: part of an int8 engine's cache key and of its
#: export.json, so graphs quantized by an earlier recipe are made again (2: the patch
#: embedding kept fp32 on OpenVINO too)
RECIPE = 2
#: calibration images per batch fed to the quantizers
CALIBRATION_BATCH = 1


def _namespace(node: Any) -> str:
    return {p.key: p.value for p in node.metadata_props}.get("namespace", "")


def quantized_nodes(model: Any) -> list[str]:
    """The names of an exported ONNX graph's linear layers inside the transformer blocks
    (``MatMul`` nodes whose namespace holds :data:`QUANTIZED_SCOPE` and a ``Linear``)."""
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul"
        and QUANTIZED_SCOPE in _namespace(n)
        and "torch.nn.modules.linear.Linear" in _namespace(n)
    ]


def fp32_nodes(model: Any) -> list[str]:
    """The names of the nodes outside the transformer blocks (kept fp32, see the module doc)."""
    return [n.name for n in model.graph.node if QUANTIZED_SCOPE not in _namespace(n)]


def openvino_fp32_ops(onnx_names: Iterable[str], openvino_names: Iterable[str]) -> list[str]:
    """The OpenVINO ops made from the ONNX nodes ``onnx_names``: OpenVINO keeps an ONNX node's
    name for the op it becomes, or the name and a suffix for the parts it splits it into
    (``node_conv2d/WithoutBiases``, the patch embedding without its bias: missed by name alone,
    it was quantized and cost 0.025 of image AUROC in ``benchmarks/fewshot.py``)."""
    kept = set(onnx_names)
    return [n for n in openvino_names if n in kept or n.split("/", 1)[0] in kept]


def calibration_batches(images: np.ndarray, batch: int = CALIBRATION_BATCH) -> list[np.ndarray]:
    """(n, 3, S, S) float32 → batches of at most ``batch`` images, for the quantizers."""
    return [np.ascontiguousarray(images[i : i + batch]) for i in range(0, len(images), batch)]


@contextlib.contextmanager
def quiet(names: Iterable[str]) -> Iterator[None]:
    """Silence the libraries that export and quantize (their loggers ``names`` below ERROR,
    their warnings, their prints and progress bars on stdout): torch's ONNX exporter prints its
    steps, NNCF logs every op it skips and draws progress bars, ONNX Runtime's quantizer
    advises pre-processing. Only our own log lines say what happens."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def quantize_openvino(onnx_path: Path, out_xml: Path, images: np.ndarray) -> dict[str, Any]:
    """The fp32 ONNX graph ``onnx_path`` → an int8 OpenVINO IR ``out_xml`` (+ ``.bin``),
    calibrated on ``images`` (n, 3, S, S) float32 in [0, 1]. Returns what was done (for
    ``export.json``).

    Raises:
        MissingExtraError: openvino or nncf is not installed (``tipsomaly[openvino]``).
    """
    import onnx

    from .inferencers.openvino import shared_core

    ov = require("openvino", "openvino", "an int8 OpenVINO export")
    nncf = require("nncf", "openvino", "an int8 OpenVINO export")

    model = ov.convert_model(str(onnx_path))
    ignored = openvino_fp32_ops(fp32_nodes(onnx.load(str(onnx_path), load_external_data=False)),
                                (op.get_friendly_name() for op in model.get_ops()))  # fmt: skip
    batches = calibration_batches(images)
    # NNCF compiles with Cores of its own: made while the process's one Core lives, each
    # restores that Core's signal stack when it goes (see shared_core), never a freed one
    shared_core()
    with quiet(("nncf",)):
        quantized = nncf.quantize(
            model,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,  # SmoothQuant, transformer-safe quantizers
            preset=nncf.QuantizationPreset.MIXED,  # symmetric weights, asymmetric activations
            subset_size=len(batches),
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
        )
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    fq = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    return {
        "tool": f"nncf {nncf.__version__} quantize (post-training static)",
        "recipe": RECIPE,
        "model_type": "transformer (SmoothQuant)",
        "preset": "mixed",
        "quantizers": int(fq),
        "fp32": FP32_SCOPE,
    }


class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over calibration batches."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}


def calibration_reader(input_name: str, images: np.ndarray) -> Any:
    """ONNX Runtime's calibration reader over ``images`` (n, 3, S, S), in
    :data:`CALIBRATION_BATCH` batches."""
    from onnxruntime.quantization import CalibrationDataReader

    reader = type("Reader", (_Reader, CalibrationDataReader), {})
    return reader(input_name, calibration_batches(images))


def _external(graph: Any) -> bool:
    import onnx

    return any(onnx.external_data_helper.uses_external_data(t) for t in graph.graph.initializer)


def ort_options(graph: Any) -> dict[str, Any]:
    """``quantize_static``'s settings for the fp32 ONNX ``graph`` (a ModelProto, its weights
    need not be loaded): QDQ, the linear layers of :func:`quantized_nodes` only, uint8
    activations per tensor (MinMax), int8 weights per channel."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    return dict(
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=quantized_nodes(graph),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        use_external_data_format=_external(graph),
        extra_options={"MatMulConstBOnly": True},  # weights x activations only
    )


def quantize_onnxruntime(
    onnx_path: Path, out_onnx: Path, images: np.ndarray, input_name: str
) -> dict[str, Any]:
    """The fp32 ONNX graph ``onnx_path`` → an int8 QDQ ONNX graph ``out_onnx``, calibrated on
    ``images`` (n, 3, S, S). Returns what was done (for ``export.json``).

    The calibration records the quantized layers' own tensors only
    (:func:`_narrowed_calibration`), then hands its ranges to ``quantize_static`` as a
    calibration cache: the same graph as ONNX Runtime's own calibrator gives, in a fraction
    of its memory (on an ONNX Runtime without calibration caches, its own calibrator runs).

    Raises:
        MissingExtraError: onnxruntime is not installed (``tipsomaly[onnx]``).
    """
    import inspect
    import tempfile

    import onnx

    require("onnxruntime", "onnx", "an int8 ONNX Runtime export")
    from onnxruntime.quantization import quantize_static

    graph = onnx.load(str(onnx_path), load_external_data=False)
    options = ort_options(graph)
    reader = calibration_reader(input_name, images)
    with quiet(("root", "onnxruntime")), tempfile.TemporaryDirectory() as tmp:
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            from onnxruntime.quantization import save_tensors_data

            cache = Path(tmp) / "ranges.json"
            ranges = _activation_ranges(onnx_path, graph, options, reader, tmp)
            save_tensors_data(ranges, cache)
            quantize_static(str(onnx_path), str(out_onnx), None, **options,
                            calibration_cache_path=str(cache))  # fmt: skip
        else:
            quantize_static(str(onnx_path), str(out_onnx), reader, **options)
    import onnxruntime

    return {
        "tool": f"onnxruntime {onnxruntime.__version__} quantize_static (QDQ)",
        "recipe": RECIPE,
        "activations": "uint8, per tensor (MinMax)",
        "weights": "int8, per channel",
        "quantized_nodes": len(options["nodes_to_quantize"]),
        "fp32": FP32_SCOPE,
    }


def _narrowed_calibration(tensors: set[str], graph: Any, nodes: Sequence[str]) -> set[str]:
    """Of the tensors ONNX Runtime's calibrator would record (every input and output of every
    ``MatMul``), those of the quantized ``nodes``: the ranges the quantizer reads.

    The others include the attention's (heads, tokens, tokens) products: recording them took
    7 GB for B/14 at 518 px and ran an L/14 export out of a 24 GB machine; without them, B/14
    takes 1.4 GB."""
    keep = set(nodes)
    own = {t for n in graph.graph.node if n.name in keep for t in (*n.input, *n.output)}
    return tensors & own


def _activation_ranges(
    onnx_path: Path, graph: Any, options: dict[str, Any], reader: Any, tmp: str
) -> Any:
    """The min and max of the quantized layers' tensors over ``reader``'s batches
    (ONNX Runtime's MinMax calibrator, narrowed by :func:`_narrowed_calibration`), for the
    :func:`ort_options` ``options``."""
    from onnxruntime.quantization import MinMaxCalibrater

    nodes = options["nodes_to_quantize"]

    class QuantizedLayers(MinMaxCalibrater):
        def select_tensors_to_calibrate(self, model):  # noqa: ANN001, ANN202 (ORT's hook)
            tensors, infos = super().select_tensors_to_calibrate(model)
            return _narrowed_calibration(tensors, graph, nodes), infos

    calibrator = QuantizedLayers(
        onnx_path,
        ["MatMul"],
        augmented_model_path=str(Path(tmp) / "augmented.onnx"),
        use_external_data_format=options["use_external_data_format"],
    )
    calibrator.augment_graph()
    calibrator.execution_providers = ["CPUExecutionProvider"]
    calibrator.create_inference_session()
    calibrator.collect_data(reader)
    return calibrator.compute_data()


def quantize(
    runtime: str, onnx_path: Path, out_path: Path, images: np.ndarray, input_name: str
) -> dict[str, Any]:
    """:func:`quantize_openvino` or :func:`quantize_onnxruntime`, by ``runtime``."""
    logger.info("quantizing to int8 for %s on %d calibration image(s)", runtime, len(images))
    if runtime == "openvino":
        return quantize_openvino(onnx_path, out_path, images)
    return quantize_onnxruntime(onnx_path, out_path, images, input_name)


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float | None:
    """Spearman's rank correlation of two score lists (ties get their mean rank), or None
    with fewer than 3 values or a constant list (no ranking to compare)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    return mean_rank[inverse]


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a calibration folder (as ``predict`` finds them), sorted."""
    from ..data.inputs import expand_inputs

    return [p for p in expand_inputs([folder]) if p.is_file()]
