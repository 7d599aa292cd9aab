"""Checkers: the shapes attribute detector on real (and blurred) test images, the digit classifier."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cogview.datasets import load
from cogview.datasets.checkers import SHAPE_FIELDS, DigitClassifier, check_shapes, detect_shape_attributes


def test_shapes_detector_is_right_on_test_images() -> None:
    for e in load("shapes", "test", n=40):
        found = detect_shape_attributes(e.image)
        assert {f: found[f] for f in SHAPE_FIELDS} == {f: e.attributes[f] for f in SHAPE_FIELDS}, e.attributes


def test_shapes_checker_is_robust_to_blur_noise_and_size() -> None:
    rng = np.random.default_rng(0)
    for e in load("shapes", "test", n=20, size=64):
        blurred = e.image.filter(ImageFilter.GaussianBlur(2.0)).resize((32, 32), Image.Resampling.BILINEAR)
        noisy = np.clip(np.asarray(blurred, np.float32) + rng.normal(0, 12, (32, 32, 3)), 0, 255).astype(
            np.uint8
        )
        assert check_shapes(noisy, e.attributes)["all"], e.attributes
        assert check_shapes(e.image, e.attributes) == {**{f: True for f in SHAPE_FIELDS}, "all": True}


def test_shapes_checker_reports_mismatches() -> None:
    e = load("shapes", "test", n=1)[0]
    wrong = dict(e.attributes, colour="white" if e.attributes["colour"] != "white" else "black")
    result = check_shapes(e.image, wrong)
    assert result["colour"] is False and result["all"] is False and result["shape"] is True
    blank = Image.new("RGB", (32, 32), (40, 80, 220))
    found = detect_shape_attributes(blank)
    assert found["background"] == "blue" and found["shape"] is None
    with pytest.raises(ValueError, match="attributes"):
        check_shapes(e.image, {"shape": "circle"})


def test_digit_classifier_accuracy_on_test_split() -> None:
    clf = DigitClassifier.fit_default()
    test = load("digits", "test")
    images = [e.image for e in test]
    labels = np.array([e.attributes["digit"] for e in test])
    assert (np.array(clf.predict(images)) == labels).mean() >= 0.95
    blurred = [im.filter(ImageFilter.GaussianBlur(1.0)) for im in images[:100]]
    assert (np.array(clf.predict(blurred)) == labels[:100]).mean() >= 0.93
    big = [e.image for e in load("digits", "test", size=64)][:50]
    assert (np.array(clf.predict(big)) == labels[:50]).mean() >= 0.93


def test_digit_classifier_requires_fit() -> None:
    with pytest.raises(ValueError, match="fit"):
        DigitClassifier().predict([Image.new("RGB", (32, 32), "white")])
