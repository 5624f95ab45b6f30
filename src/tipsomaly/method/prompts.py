"""Prompt ensembles (the paper's or a user's) and the class embeddings built from them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import TipsomalyError
from ..tips.model import TipsModel
from .names import BUILTIN_PROMPT_TYPES  # noqa: F401  (re-exported)

NORMAL, ABNORMAL = 0, 1


class PromptError(TipsomalyError, ValueError):
    """A prompt file or prompt type is unusable."""


@dataclass(frozen=True)
class PromptSet:
    """One ensemble: a sentence is ``template.format(state.format(class_name))``.

    ``normal_states`` / ``abnormal_states`` hold one ``{}`` for the object; ``templates`` hold
    one ``{}`` for the state phrase.
    """

    name: str
    normal_states: tuple[str, ...]
    abnormal_states: tuple[str, ...]
    templates: tuple[str, ...]

    def sentences(self, class_name: str) -> tuple[list[str], list[str]]:
        """(normal sentences, abnormal sentences) for one class name (not yet cleaned)."""
        return (
            [t.format(s.format(class_name)) for s in self.normal_states for t in self.templates],
            [t.format(s.format(class_name)) for s in self.abnormal_states for t in self.templates],
        )

    @classmethod
    def from_dict(cls, name: str, data: dict, source: str = "prompts") -> PromptSet:
        where = f"{source}: ensemble {name!r}"
        if not isinstance(data, dict):
            raise PromptError(f"{where} must be an object")
        fields = {}
        for key in ("normal_states", "abnormal_states", "templates"):
            items = data.get(key)
            if not (isinstance(items, list) and items and all(isinstance(i, str) for i in items)):
                raise PromptError(f"{where}: '{key}' must be a non-empty list of strings")
            for item in items:
                rest = item.replace("{}", "")
                if item.count("{}") != 1 or "{" in rest or "}" in rest:
                    raise PromptError(
                        f"{where}: {key} entry {item!r} must contain exactly one '{{}}'"
                    )
            fields[key] = tuple(items)
        return cls(name=name, **fields)


def clean_class_name(name: str) -> str:
    """Class names as the paper writes them into prompts: ``_`` and ``-`` become spaces."""
    cleaned = " ".join(name.replace("_", " ").replace("-", " ").split())
    if not cleaned:
        raise PromptError(f"class name {name!r} is empty")
    return cleaned


def _read_ensembles(path: Path | None) -> dict[str, dict]:
    if path is None:
        text = resources.files("tipsomaly.resources").joinpath("prompts.json").read_text()
        source = "built-in prompts.json"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise PromptError(f"cannot read prompt file {path}: {exc}") from None
        source = str(path)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PromptError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PromptError(f"{source} must hold a JSON object")
    if "normal_states" in data:  # a file holding a single ensemble
        return {Path(source).stem: data}
    return {k: v for k, v in data.items() if not k.startswith("_")}


def load_prompts(
    prompt_type: str = "industrial", prompt_file: str | os.PathLike | None = None
) -> PromptSet:
    """A built-in ensemble (``industrial``, ``medical``, ``object_agnostic``) or one from a file.

    A prompt file uses the schema of the built-in ``prompts.json``: either one ensemble object
    (``normal_states``, ``abnormal_states``, ``templates``) or several under names, of which
    ``prompt_type`` picks one.
    """
    source = str(prompt_file) if prompt_file is not None else "built-in prompts.json"
    ensembles = _read_ensembles(Path(prompt_file) if prompt_file is not None else None)
    key = prompt_type.replace("-", "_")
    if prompt_file is not None and len(ensembles) == 1:
        key = next(iter(ensembles))
    if key not in ensembles:
        raise PromptError(
            f"no prompt ensemble {prompt_type!r} in {source}; available: {', '.join(ensembles)}"
        )
    return PromptSet.from_dict(key, ensembles[key], source)


def encode_sentences(
    model: TipsModel,
    sentences: Sequence[str],
    prefix: torch.Tensor | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """(N, D) L2-normalised text embeddings of ``sentences``, computed ``batch_size`` at a time."""
    chunks = []
    for start in range(0, len(sentences), batch_size):
        ids, paddings = model.tokenize(sentences[start : start + batch_size])
        chunks.append(model.text(ids, paddings, prefix=prefix).float())
    return F.normalize(torch.cat(chunks), dim=-1)


def ensemble_embedding(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean of L2-normalised sentence embeddings (N, D), L2-normalised again → (D,)."""
    return F.normalize(embeddings.mean(dim=0), dim=-1)


def class_embeddings(
    model: TipsModel, prompts: PromptSet, class_name: str, batch_size: int = 64
) -> torch.Tensor:
    """(2, D) fixed-prompt embeddings of one class: [normal, abnormal], L2-normalised."""
    normal, abnormal = prompts.sentences(clean_class_name(class_name))
    embeddings = encode_sentences(model, normal + abnormal, batch_size=batch_size)
    parts = embeddings.split([len(normal), len(abnormal)])
    return torch.stack([ensemble_embedding(part) for part in parts])


def learned_embeddings(
    model: TipsModel,
    prompts: PromptSet,
    preambles: torch.Tensor,
    class_name: str = "object",
    batch_size: int = 64,
) -> torch.Tensor:
    """(2, D) embeddings of the learned pixel prompts: [normal, abnormal], L2-normalised.

    ``preambles`` is (2, n_prompt, D): the normal and abnormal learned vectors, prepended to the
    token embeddings of that state's sentences. Differentiable in ``preambles``.
    """
    normal, abnormal = prompts.sentences(clean_class_name(class_name))
    out = []
    for state, sentences in ((NORMAL, normal), (ABNORMAL, abnormal)):
        embeddings = encode_sentences(
            model, sentences, prefix=preambles[state], batch_size=batch_size
        )
        out.append(ensemble_embedding(embeddings))
    return torch.stack(out)
