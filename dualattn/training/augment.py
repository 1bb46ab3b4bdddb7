"""Training augmentation on the accelerator: one pure, jittable function of (rng, uint8 batch).

The input pipeline only decodes and resizes (uint8, cheap to transfer); everything random
happens here, inside the jitted train step, so CPU workers never bound the GPU:

1. horizontal flip (p 0.5);
2. random translation (BoT's pad 10 + random crop: integer shifts in [-10, 10], zero fill) and
   random rotation (uniform in [-deg, deg] about the centre), fused into one bilinear affine
   warp; with integer shifts and no rotation it reproduces pad-and-crop exactly;
3. ImageNet normalisation (``dualattn.models.preprocess``);
4. random erasing (Zhong et al.; p 0.5, area 0.02-0.4 of the image, aspect 0.3-3.3, up to
   ``erase_attempts`` draws for a rectangle that fits), filled with 0 after normalisation, i.e.
   with the ImageNet mean colour.

Evaluation applies the normalisation alone: deterministic, no rng.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from dualattn.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize

# Every draw names its dtype, so that a run under ``jax_enable_x64`` (a float64 reference of
# the train step) augments exactly as the float32 run: default-typed draws would be 64-bit
# there, and other random numbers.
F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True
    translate: int = 10  # max shift in pixels (BoT's padding); 0 turns it off
    rotate_degrees: float = 10.0  # 0 turns it off
    erase_prob: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_aspect: tuple[float, float] = (0.3, 3.3)
    erase_attempts: int = 10
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _warp(image: jax.Array, angle: jax.Array, shift: jax.Array) -> jax.Array:
    """Bilinear sample of ``image`` (H, W, C) at out(p) = in(R(angle)(p - c) + c - shift)."""
    h, w, _ = image.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    dy, dx = yy - cy, xx - cx
    src_y = cos * dy - sin * dx + cy - shift[0]
    src_x = sin * dy + cos * dx + cx - shift[1]
    y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
    wy, wx = (src_y - y0)[..., None], (src_x - x0)[..., None]

    def tap(y, x):
        inside = (y >= 0) & (y <= h - 1) & (x >= 0) & (x <= w - 1)
        yi = jnp.clip(y, 0, h - 1).astype(jnp.int32)
        xi = jnp.clip(x, 0, w - 1).astype(jnp.int32)
        return jnp.where(inside[..., None], image[yi, xi], 0.0)

    return ((1 - wy) * (1 - wx) * tap(y0, x0) + (1 - wy) * wx * tap(y0, x0 + 1)
            + wy * (1 - wx) * tap(y0 + 1, x0) + wy * wx * tap(y0 + 1, x0 + 1))


def erase_boxes(rng: jax.Array, batch: int, h: int, w: int, cfg: AugmentConfig) -> jax.Array:
    """(B, 4) int boxes (y0, x0, height, width); height 0 means no erasing for that image.

    Draws ``erase_attempts`` candidates per image, as the reference implementation retries,
    and keeps the first one that fits inside the image.
    """
    k_apply, k_area, k_aspect, k_y, k_x = jax.random.split(rng, 5)
    n = cfg.erase_attempts
    area = h * w * jax.random.uniform(k_area, (batch, n), F32, minval=cfg.erase_area[0],
                                      maxval=cfg.erase_area[1])
    aspect = jax.random.uniform(k_aspect, (batch, n), F32, minval=cfg.erase_aspect[0],
                                maxval=cfg.erase_aspect[1])
    eh = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    ew = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
    first = jnp.argmax(fits, axis=1)
    pick = lambda a: jnp.take_along_axis(a, first[:, None], axis=1)[:, 0]  # noqa: E731
    eh, ew = pick(eh), pick(ew)
    apply = (jax.random.uniform(k_apply, (batch,), F32) < cfg.erase_prob) & jnp.any(fits, axis=1)
    y0 = jnp.floor(jax.random.uniform(k_y, (batch,), F32) * (h - eh + 1)).astype(jnp.int32)
    x0 = jnp.floor(jax.random.uniform(k_x, (batch,), F32) * (w - ew + 1)).astype(jnp.int32)
    return jnp.stack([y0, x0, jnp.where(apply, eh, 0), ew], axis=1)


def augment(rng: jax.Array, images: jax.Array, cfg: AugmentConfig = AugmentConfig()) -> jax.Array:
    """Random training augmentation of a uint8 NHWC batch; returns normalised f32."""
    b, h, w, _ = images.shape
    k_flip, k_shift, k_angle, k_erase = jax.random.split(rng, 4)
    x = images.astype(jnp.float32)
    if cfg.flip:
        flip = jax.random.bernoulli(k_flip, F32(0.5), (b,))
        x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
    if cfg.translate or cfg.rotate_degrees:
        shift = jax.random.randint(k_shift, (b, 2), -cfg.translate, cfg.translate + 1,
                                   jnp.int32)
        max_angle = math.radians(cfg.rotate_degrees)
        angle = jax.random.uniform(k_angle, (b,), F32, minval=-max_angle, maxval=max_angle)
        x = jax.vmap(_warp)(x, angle, shift.astype(jnp.float32))
    x = normalize(x, cfg.mean, cfg.std)
    if cfg.erase_prob > 0:
        boxes = erase_boxes(k_erase, b, h, w, cfg)
        yy = jnp.arange(h)[None, :, None]
        xx = jnp.arange(w)[None, None, :]
        y0, x0, eh, ew = (boxes[:, i, None, None] for i in range(4))
        inside = (yy >= y0) & (yy < y0 + eh) & (xx >= x0) & (xx < x0 + ew)
        x = jnp.where(inside[..., None], 0.0, x)
    return x
