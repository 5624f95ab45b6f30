"""A ready TIPS model (towers, tokenizer, temperature) from a preset or a model directory."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..fingerprint import text_digest
from .checkpoint import (
    CheckpointError,
    check_temperature,
    load_into,
    pop_scalar,
    read_npz,
    read_safetensors,
    split_prefixed,
)
from .config import ConfigError, TextConfig, VisionConfig
from .presets import DEFAULT_PRESET, TOKENIZER_FILE, Preset, named_preset
from .text import TextTransformer
from .tokenizer import Tokenizer
from .vision import VisionFeatures, VisionTransformer
from .weights import WeightsUnavailableError, fetch, offline_mode, weights_dir

logger = logging.getLogger(__name__)

MODEL_FILE = "model.json"


class TipsModel(nn.Module):
    """The two TIPS towers, the tokenizer and the logit temperature.

    Image and text embeddings share the width ``embed_dim``; logits are
    ``cosine / temperature``.
    """

    def __init__(
        self,
        vision_config: VisionConfig,
        text_config: TextConfig,
        tokenizer: Tokenizer,
        temperature: float,
        name: str = "custom",
    ) -> None:
        super().__init__()
        if vision_config.embed_dim != text_config.hidden_size:
            raise ConfigError(
                f"vision.embed_dim ({vision_config.embed_dim}) and text.hidden_size "
                f"({text_config.hidden_size}) must be equal: TIPS has no projection heads"
            )
        self.name = name
        # Identifies the weights (set by the loaders); keys on-disk caches of derived values.
        self.fingerprint: str | None = None
        self.vision = VisionTransformer(vision_config)
        self.text = TextTransformer(text_config)
        self.tokenizer = tokenizer
        self.temperature = check_temperature(temperature, f"{name} model")

    @property
    def embed_dim(self) -> int:
        return self.vision.config.embed_dim

    @property
    def patch_size(self) -> int:
        return self.vision.config.patch_size

    @property
    def device(self) -> torch.device:
        return self.vision.pos_embed.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The vision tower's matmul dtype; the text tower always runs in fp32."""
        return self.vision.compute_dtype

    def set_compute_dtype(self, dtype: torch.dtype) -> TipsModel:
        """Vision matmuls in ``dtype`` (fp32, bf16, fp16); norms, softmax and text stay fp32.

        The text tower runs once per class and prompt set, so it keeps full precision.
        """
        self.vision.set_compute_dtype(dtype)
        return self

    def encode_image(self, images: torch.Tensor) -> VisionFeatures:
        """(B, 3, H, W) images in [0, 1] → (cls1 (B,1,D), cls2 (B,1,D), patches (B,N,D))."""
        return self.vision(images.to(self.device))

    def tokenize(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and paddings, each (B, max_len) int64 on the model's device."""
        ids, paddings = self.tokenizer(texts)
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(paddings).to(self.device)

    def encode_text(
        self, texts: str | Sequence[str], prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, D) text embeddings, not L2-normalised; ``prefix`` as in :class:`TextTransformer`."""
        ids, paddings = self.tokenize(texts)
        return self.text(ids, paddings, prefix=prefix)


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's arrays come from: two ``.npz`` files or one combined ``.safetensors``."""

    tokenizer: Path
    vision: Path | None = None
    text: Path | None = None
    combined: Path | None = None
    temperature: float | None = None
    temperature_source: str = "the model description"  # named in errors about ``temperature``

    def fingerprint(self) -> str:
        """A short hash of the files' identities (path, size, modification time, content hash
        where the weights cache recorded one): changes whenever the weights do.

        Cheap (no file is read), unlike :func:`tipsomaly.fingerprint.file_digest`; the
        text-embedding and feature caches key on it.
        """
        from .weights import ChecksumRegistry

        parts = [str(self.temperature)]
        for path in (self.tokenizer, self.vision, self.text, self.combined):
            if path is None:
                continue
            resolved = Path(path).resolve()  # hub files resolve to blobs named by content
            stat = resolved.stat()
            recorded = ChecksumRegistry(Path(path).parent).get(Path(path).name) or ""
            parts.append(f"{resolved}:{stat.st_size}:{stat.st_mtime_ns}:{recorded}")
        return text_digest("|".join(parts), 16)


def build_model(
    vision_config: VisionConfig,
    text_config: TextConfig,
    files: ModelFiles,
    *,
    name: str = "custom",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TipsModel:
    """Build the towers and load their arrays strictly; every loader ends here.

    The temperature comes from the text checkpoint's ``temperature_key`` if present, else
    from ``files.temperature``.
    """
    if files.combined is not None:
        parts = split_prefixed(
            read_safetensors(files.combined), {"vision": "vision_encoder.", "text": "text_encoder."}
        )
        vision_arrays, text_arrays = parts["vision"], parts["text"]
        if parts[""]:
            keys = ", ".join(sorted(parts[""])[:20])
            raise CheckpointError(
                f"{files.combined}: keys without a vision_encoder./text_encoder. prefix: {keys}"
            )
        vision_src = text_src = str(files.combined)
    else:
        assert files.vision is not None and files.text is not None
        vision_arrays, text_arrays = read_npz(files.vision), read_npz(files.text)
        vision_src, text_src = str(files.vision), str(files.text)
    temperature = pop_scalar(text_arrays, text_config.temperature_key, text_src)
    temperature_src = text_src
    if temperature is None:
        temperature, temperature_src = files.temperature, files.temperature_source
    if temperature is None:
        raise CheckpointError(
            f"{text_src} holds no '{text_config.temperature_key}' and none is known for this "
            "model: add it to the text checkpoint or to the model description"
        )
    temperature = check_temperature(temperature, temperature_src)
    tokenizer = Tokenizer(files.tokenizer, max_len=text_config.max_len)
    if tokenizer.vocab_size > text_config.vocab_size:
        raise CheckpointError(
            f"{files.tokenizer} has {tokenizer.vocab_size} pieces but the text tower only "
            f"{text_config.vocab_size} embeddings"
        )
    with torch.device("meta"):
        model = TipsModel(vision_config, text_config, tokenizer, temperature, name=name)
    model.to_empty(device="cpu")  # no random init: every array is loaded below
    load_into(model.vision, vision_arrays, vision_src)
    load_into(model.text, text_arrays, text_src)
    model.eval().requires_grad_(False)
    model.fingerprint = files.fingerprint()
    return model.to(device=device).set_compute_dtype(dtype)


def read_model_description(path: str | os.PathLike) -> tuple[VisionConfig, TextConfig]:
    """Parse a ``model.json`` (or ``golden.json``): a ``vision`` and a ``text`` object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"model description not found: {path}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "vision" not in data or "text" not in data:
        raise ConfigError(f"{path} must hold a 'vision' and a 'text' object")
    return (
        VisionConfig.from_dict(data["vision"], f"{path}: vision"),
        TextConfig.from_dict(data["text"], f"{path}: text"),
    )


def load_model_dir(
    directory: str | os.PathLike,
    *,
    description: str = MODEL_FILE,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TipsModel:
    """Load a model directory: ``model.json``, the two ``.npz`` files it names, the tokenizer.

    ``model.json`` holds a ``vision`` and a ``text`` object (keys as in the golden
    ``golden.json``: ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``ffn``, ... and
    ``hidden_size``, ``mlp_dim``, ...); ``vision.npz`` / ``text.npz`` / ``tokenizer.model`` are
    the default file names. An optional top-level ``temperature`` is used when the text
    checkpoint has none.
    """
    directory = Path(directory)
    description_path = directory / description
    vision_config, text_config = read_model_description(description_path)
    extra = json.loads(description_path.read_text())
    files = ModelFiles(
        tokenizer=directory / text_config.tokenizer,
        vision=directory / vision_config.npz,
        text=directory / text_config.npz,
        temperature=extra.get("temperature"),
        temperature_source=str(description_path),
    )
    return build_model(
        vision_config, text_config, files, name=directory.name, device=device, dtype=dtype
    )


def preset_files(
    preset: Preset, *, source: str = "auto", offline: bool | None = None, progress: bool = True
) -> ModelFiles:
    """Local files of a preset, downloaded into the cache first if needed.

    ``source``: ``"gcs"`` (the ``.npz`` files of Google's bucket, every preset), ``"hub"``
    (``model.safetensors`` of the Hugging Face hub, TIPSv2 only) or ``"auto"`` (the hub's
    cache for a TIPSv2 preset already there and not in our cache, else the bucket).
    """
    if source not in ("auto", "gcs", "hub"):
        raise ValueError(f"source must be 'auto', 'gcs' or 'hub', got {source!r}")
    if offline is None:
        offline = offline_mode()
    root = weights_dir()
    if source == "auto" and preset.hub_repo and not (root / preset.vision_file).exists():
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(preset.hub_repo, "model.safetensors"), str):
            source = "hub"  # already in the Hugging Face cache: no download needed
    if source == "hub":
        return _hub_files(preset, offline)
    wanted = {
        "tokenizer": (preset.tokenizer_url, root / TOKENIZER_FILE),
        "vision": (preset.vision_url, root / preset.vision_file),
        "text": (preset.text_url, root / preset.text_file),
    }
    found: dict[str, Path] = {}
    problems: list[str] = []
    for role, (url, dest) in wanted.items():
        try:
            found[role] = fetch(url, dest, offline=offline, progress=progress)
        except WeightsUnavailableError as exc:
            problems.append(str(exc))  # go on, so one message lists every missing file
    if problems:
        raise WeightsUnavailableError(
            f"{preset.name} ({preset.short_name}) is not usable yet:\n  " + "\n  ".join(problems)
        )
    return ModelFiles(
        temperature=preset.temperature, temperature_source=f"preset {preset.name}", **found
    )


def _hub_files(preset: Preset, offline: bool) -> ModelFiles:
    if not preset.hub_repo:
        raise ValueError(f"{preset.name} is not on the Hugging Face hub; use source='gcs'")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    class NotInRepo(Exception):
        """The repository has no such file (as opposed to: we could not reach it)."""

    def get(filename: str) -> Path:
        try:
            return Path(hf_hub_download(preset.hub_repo, filename, local_files_only=offline))
        except LocalEntryNotFoundError as exc:  # not cached, and offline or unreachable
            raise _hub_unavailable(preset.hub_repo, filename, exc) from exc
        except EntryNotFoundError:  # reached the hub: the file is not in the repository
            raise NotInRepo(filename) from None
        except (HfHubHTTPError, OSError) as exc:
            raise _hub_unavailable(preset.hub_repo, filename, exc) from exc

    try:
        combined = get("model.safetensors")
    except NotInRepo:
        raise WeightsUnavailableError(f"{preset.hub_repo} has no model.safetensors") from None
    temperature = preset.temperature
    try:
        config = json.loads(get("config.json").read_text())
        temperature = check_temperature(
            float(config.get("temperature", temperature)), f"{preset.hub_repo}/config.json"
        )
    except (NotInRepo, ValueError, TypeError, AttributeError):
        temperature = preset.temperature
        logger.warning(
            "no usable temperature in %s/config.json; using the preset's", preset.hub_repo
        )
    try:
        tokenizer = get(TOKENIZER_FILE)
    except NotInRepo:  # the hub repos may not carry it: every TIPS model shares v1's tokenizer
        tokenizer = fetch(preset.tokenizer_url, weights_dir() / TOKENIZER_FILE, offline=offline)
    return ModelFiles(
        tokenizer=tokenizer,
        combined=combined,
        temperature=temperature,
        temperature_source=f"preset {preset.name} ({preset.hub_repo})",
    )


def _hub_unavailable(repo: str, filename: str, exc: Exception) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"could not get {filename} of {repo} from the Hugging Face hub ({type(exc).__name__}: "
        f"{exc}). With network access run `hf download {repo}` (huggingface_hub's current CLI; "
        f"files go to the Hugging Face cache), or use the bucket source: --source gcs"
    )


def load_model(
    model: str | os.PathLike = DEFAULT_PRESET,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str = "auto",
    offline: bool | None = None,
    progress: bool = True,
) -> TipsModel:
    """A ready, frozen, eval-mode TIPS model.

    Args:
        model: a preset name (``"l14h"``, ``"tips-v2-b14"``, ...; see
            :data:`tipsomaly.tips.presets.PRESETS`) or a model directory holding ``model.json``.
        dtype: the vision tower's matmul precision (fp32 default; bf16/fp16: see
            :meth:`TipsModel.set_compute_dtype`).
        source: for presets, ``"gcs"``, ``"hub"`` (TIPSv2) or ``"auto"``.
        offline: never download (default: ``$TIPSOMALY_OFFLINE``); a missing file then raises
            :class:`WeightsUnavailableError` naming the URL and the path to put it at.
    """
    path = Path(model)
    if path.is_dir():
        return load_model_dir(path, device=device, dtype=dtype)
    preset = named_preset(model)
    files = preset_files(preset, source=source, offline=offline, progress=progress)
    return build_model(
        preset.vision, preset.text, files, name=preset.name, device=device, dtype=dtype
    )
