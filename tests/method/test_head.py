"""TipsomalyHead: the method as one frozen, traceable nn.Module, equal to the Detector's scores."""

from __future__ import annotations

import warnings

import pytest
import torch

from tipsomaly.method.detector import Detector
from tipsomaly.method.head import DetectorOutput, TipsomalyHead
from tipsomaly.method.pixel_prompts import PixelPrompts
from tipsomaly.method.prompts import class_embeddings, learned_embeddings, load_prompts
from tipsomaly.tips.model import load_model_dir


def _names(golden) -> list[str]:
    return [golden.config["pipeline"]["class_names"][i] for i in golden["class_ids"]]


def _detector(golden, learned: bool = True, cls: str = "cls1") -> Detector:
    pipeline = golden.config["pipeline"]
    prompts = PixelPrompts(torch.from_numpy(golden["learnable_prompts"])) if learned else None
    return Detector(
        golden.model(),
        prompt_type=pipeline["prompt_type"],
        pixel_prompts=prompts,
        image_size=pipeline["image_size"],
        sigma=pipeline["sigma"],
        cls=cls,
        text_cache=False,
    )


def _head(
    golden, learned: bool = True, cls: str = "cls1", class_names: list[str] | None = None
) -> TipsomalyHead:
    """A head built from the text tower directly, without a Detector (by default for the case's
    classes)."""
    pipeline = golden.config["pipeline"]
    model, prompts = golden.model(), load_prompts(pipeline["prompt_type"])
    names = pipeline["class_names"] if class_names is None else class_names
    with torch.no_grad():
        fixed = torch.stack([class_embeddings(model, prompts, c) for c in names])
        preambles = torch.from_numpy(golden["learnable_prompts"])
        pixel = learned_embeddings(model, prompts, preambles) if learned else None
    return TipsomalyHead(model, fixed, pixel, sigma=pipeline["sigma"], cls=cls)


def _images(golden) -> torch.Tensor:
    return torch.from_numpy(golden["images"])


def _assert_equal(got: DetectorOutput | tuple, expected: DetectorOutput) -> None:
    assert len(got) == len(expected)
    for field, a, b in zip(DetectorOutput._fields, got, expected, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, field
        assert torch.equal(a, b), field


@pytest.mark.parametrize(("learned", "cls"), [(True, "cls1"), (False, "cls1"), (True, "cls2")])
def test_head_equals_detector_score_batch_exactly(golden, learned, cls):
    detector = _detector(golden, learned, cls)
    scores = detector.score_batch(_images(golden), _names(golden))
    with torch.no_grad():
        out = _head(golden, learned, cls)(_images(golden), torch.from_numpy(golden["class_ids"]))
    assert isinstance(out, DetectorOutput)
    chosen = scores.score_cls1 if cls == "cls1" else scores.score_cls2
    expected = DetectorOutput(
        chosen,
        scores.score_cls1,
        scores.score_cls2,
        scores.maps,
        scores.global_probs_cls1[:, 1],
        scores.global_probs_cls2[:, 1],
        scores.patch_probs[..., 1],
    )
    _assert_equal(out, expected)
    # the evidence the scores are made of: score_clsK = global_clsK + max patch evidence
    torch.testing.assert_close(out.score_cls1, out.global_cls1 + out.patch_evidence.amax(1))
    size = golden.config["pipeline"]["image_size"]
    assert out.anomaly_map.shape == (len(golden["class_ids"]), size, size)


def test_detector_head_holds_the_batch_classes(golden):
    detector = _detector(golden)
    names = _names(golden)
    head, index = detector.head_for(names)
    assert head is detector.head and index.tolist() == list(golden["class_ids"])
    distinct = list(dict.fromkeys(names))
    assert torch.equal(head.class_text, torch.stack([detector.class_text(c) for c in distinct]))
    assert torch.equal(head.pixel_text, detector.pixel_text())
    head, index = detector.head_for([names[1]] * 3)  # a later batch of one class
    assert head.class_text.shape[0] == 1 and index.tolist() == [0, 0, 0]


def test_head_is_frozen_and_its_state_dict_holds_the_text(golden):
    model = load_model_dir(golden.dir, description="golden.json")  # a copy to unfreeze
    model.vision.requires_grad_(True)
    frozen = TipsomalyHead(model, torch.zeros(1, 2, model.embed_dim))
    assert not [n for n, p in frozen.named_parameters() if p.requires_grad]
    head = _head(golden)
    assert not [n for n, p in head.named_parameters() if p.requires_grad]
    state = head.state_dict()
    assert torch.equal(state["class_text"], head.class_text) and state["class_text"].shape[1] == 2
    assert torch.equal(state["pixel_text"], head.pixel_text)
    assert state["temperature"].ndim == 0
    assert float(state["temperature"]) == pytest.approx(golden.model().temperature)
    assert any(k.startswith("vision.") for k in state)
    assert "pixel_text" not in _head(golden, learned=False).state_dict()


def test_forward_changes_no_state(golden):
    head = _head(golden)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    attributes = dict(vars(head))
    index = torch.from_numpy(golden["class_ids"])
    with torch.no_grad():
        first, second = head(_images(golden), index), head(_images(golden), index)
    _assert_equal(second, first)
    after = head.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in after)
    assert vars(head).keys() == attributes.keys()
    assert all(vars(head)[k] is v for k, v in attributes.items() if not k.startswith("_"))


def test_one_class_needs_no_index_and_several_do(golden):
    pipeline = golden.config["pipeline"]
    names = list(pipeline["class_names"])
    if len(names) == 1:  # a one-class case: a second class makes the head need an index
        names.append(pipeline.get("learnable_class_name", "object"))
    head = _head(golden, class_names=names)
    images = _images(golden)[:3]
    with pytest.raises(ValueError, match=f"holds {len(names)} classes: give class_index"):
        head(images)
    last = len(names) - 1
    with torch.no_grad():
        expected = head(images, torch.full((len(images),), last, dtype=torch.long))
        head.set_text(head.class_text[last], head.pixel_text)  # (2, D): one class
        _assert_equal(head(images), expected)


def test_set_text_refuses_wrong_shapes(golden):
    head = _head(golden)
    d = head.embed_dim
    with pytest.raises(ValueError, match=rf"class_text must be \(C, 2, {d}\), got \(2, 3, {d}\)"):
        head.set_text(torch.zeros(2, 3, d))
    with pytest.raises(ValueError, match=rf"pixel_text must be \(2, {d}\), got \(2, {d + 1}\)"):
        head.set_text(torch.zeros(1, 2, d), torch.zeros(2, d + 1))
    with pytest.raises(ValueError, match="cls must be one of"):
        TipsomalyHead(golden.model(), torch.zeros(1, 2, d), cls="cls3")


def test_jit_trace_at_the_golden_size(golden):
    """Traced on some images, the graph gives the eager outputs on other images."""
    head = _head(golden).eval()
    images, index = _images(golden), torch.from_numpy(golden["class_ids"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and shape-check TracerWarnings
        traced = torch.jit.trace(head, (images[:2], index[:2]))
    with torch.no_grad():
        expected = head(images.flip(0), index.flip(0))
    _assert_equal(traced(images.flip(0), index.flip(0)), expected)


def test_torch_export_at_the_native_grid(golden):
    """torch.export where the vision tower keeps its stored positional grid (no interpolation)."""
    head = _head(golden).eval()
    side = golden.model().vision.config.pos_embed_grid * head.patch_size
    images = torch.nn.functional.interpolate(_images(golden), size=(side, side), mode="bilinear")
    index = torch.from_numpy(golden["class_ids"])
    program = torch.export.export(head, (images[:2], index[:2]))
    assert {"class_text", "pixel_text", "temperature"} <= set(program.state_dict)
    with torch.no_grad():
        expected = head(images.flip(0)[:2], index.flip(0)[:2])
    got = program.module()(images.flip(0)[:2], index.flip(0)[:2])
    assert isinstance(got, DetectorOutput)
    _assert_equal(got, expected)


def test_torch_export_at_the_golden_size(golden):
    head = _head(golden).eval()
    torch.export.export(head, (_images(golden)[:2], torch.from_numpy(golden["class_ids"])[:2]))


def test_predict_takes_image_score_from_the_heads_cls(golden):
    detector = _detector(golden, cls="cls2")
    predictions = detector.predict(list(_images(golden)[:2]), _names(golden)[:2])
    assert detector.head.cls == "cls2"
    assert all(p.image_score == p.score_cls2 != p.score_cls1 for p in predictions)
