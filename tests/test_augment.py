import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dualattn.training.augment import AugmentConfig, _warp, augment, erase_boxes, normalize

# Device-dependent: run on GPUs by benchmarks.gpu_check (pytest -m gpu).
pytestmark = pytest.mark.gpu

OFF = AugmentConfig(flip=False, translate=0, rotate_degrees=0.0, erase_prob=0.0)


def images(b=8, h=32, w=16, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, h, w, 3), 1, 256).astype(jnp.uint8)


def test_everything_off_is_normalisation():
    x = images()
    out = augment(jax.random.key(1), x, OFF)
    np.testing.assert_allclose(out, normalize(x), rtol=1e-6)
    expected = (np.asarray(x, np.float32) / 255 - np.array([0.485, 0.456, 0.406])) / np.array(
        [0.229, 0.224, 0.225])
    # f32 against f64: values near 0 differ by f32 rounding (~2e-7) only.
    np.testing.assert_allclose(normalize(x), expected, rtol=1e-5, atol=1e-6)


def test_flip_gives_the_image_or_its_mirror_and_both_occur():
    x = images(b=32)
    out = np.asarray(augment(jax.random.key(2), x, dataclasses.replace(OFF, flip=True)))
    ref, mirror = np.asarray(normalize(x)), np.asarray(normalize(x[:, :, ::-1]))
    same = [np.array_equal(o, r) for o, r in zip(out, ref, strict=True)]
    flipped = [np.array_equal(o, m) for o, m in zip(out, mirror, strict=True)]
    assert all(s or f for s, f in zip(same, flipped, strict=True)) and any(same) and any(flipped)


def test_translation_is_an_exact_integer_shift_with_zero_fill():
    """So the translation is BoT's pad-10-and-random-crop: each output is a crop of the image
    padded with 10 black pixels."""
    x = images(b=6)
    cfg = dataclasses.replace(OFF, translate=10)
    out = np.asarray(augment(jax.random.key(3), x, cfg))
    raw = np.asarray(x, np.float32)
    for o, img in zip(out, raw, strict=True):
        padded = np.pad(img, ((10, 10), (10, 10), (0, 0)))
        found = False
        for dy in range(21):
            for dx in range(21):
                crop = normalize(padded[dy:dy + 32, dx:dx + 16][None])[0]
                if np.allclose(o, crop, atol=1e-5):
                    found = True
        assert found


def test_half_turn_rotation_is_a_double_mirror():
    img = jnp.asarray(np.random.default_rng(0).random((9, 7, 3)), jnp.float32)
    out = _warp(img, jnp.float32(math.pi), jnp.zeros(2))
    np.testing.assert_allclose(out, img[::-1, ::-1], atol=1e-5)


def test_rotation_keeps_the_centre_and_fills_corners_with_zero():
    x = jnp.full((2, 33, 17, 3), 200, jnp.uint8)
    cfg = dataclasses.replace(OFF, rotate_degrees=30.0)
    out = np.asarray(augment(jax.random.key(4), x, cfg))
    fill = np.asarray(normalize(jnp.zeros((1, 1, 1, 3))))[0, 0, 0]
    centre = np.asarray(normalize(x))[0, 16, 8]
    np.testing.assert_allclose(out[:, 16, 8], np.broadcast_to(centre, (2, 3)), atol=1e-4)
    rotated = [not np.allclose(o[0, 0], centre, atol=1e-3) for o in out]
    assert any(rotated)
    for o, r in zip(out, rotated, strict=True):
        if r:  # a corner of a rotated image comes from outside: zero (mean-coloured) fill
            assert np.allclose(o[0, 0], fill, atol=1e-3) or np.allclose(o[-1, -1], fill, atol=1e-3)


def test_erased_area_and_shape_are_within_bounds():
    h, w = 64, 32
    x = jnp.full((200, h, w, 3), 255, jnp.uint8)
    cfg = dataclasses.replace(OFF, erase_prob=1.0)
    out = np.asarray(augment(jax.random.key(5), x, cfg))
    erased = np.all(out == 0.0, axis=-1)
    fractions = erased.mean(axis=(1, 2))
    assert (fractions > 0).all()
    # Rounding the sides of a rectangle moves its area by at most about one row and column.
    slack = (h + w) / (h * w)
    assert fractions.min() >= 0.02 - slack and fractions.max() <= 0.4 + slack
    for mask in erased[:20]:  # each erased region is one filled rectangle
        ys, xs = np.nonzero(mask)
        assert mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()


def test_erase_probability_is_respected():
    boxes = erase_boxes(jax.random.key(6), 2000, 64, 32, AugmentConfig())
    rate = float(jnp.mean(boxes[:, 2] > 0))
    assert rate == pytest.approx(0.5, abs=0.05)
    assert not bool(jnp.any(erase_boxes(jax.random.key(6), 100, 64, 32,
                                        dataclasses.replace(OFF))[:, 2] > 0))


def test_full_augmentation_jits_and_depends_on_the_key():
    fn = jax.jit(functools.partial(augment, cfg=AugmentConfig()))
    x = images()
    a, b = fn(jax.random.key(0), x), fn(jax.random.key(1), x)
    assert a.shape == x.shape and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, fn(jax.random.key(0), x))
    assert not np.array_equal(a, b)
