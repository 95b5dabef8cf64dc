"""Image preprocessing ops: decode, resize (square, antialiased bilinear), value_range."""

from __future__ import annotations

import tensorflow as tf

from pg_jax.pp.builder import InKeyOutKey
from pg_jax.pp.registry import Registry


@Registry.register("preprocess_ops.decode")
@InKeyOutKey()
def get_decode(channels: int = 3):
    """Decodes PNG/JPEG bytes to uint8[H, W, channels].

    An image that is already a uint8 tensor (the raw-pixel cache) passes through unchanged, so
    the same op string serves both cache formats. Grayscale pages (common in DocVQA) become RGB.
    """

    def _decode(image: tf.Tensor) -> tf.Tensor:
        if image.dtype != tf.string:
            return image
        img = tf.io.decode_image(image, channels=channels, expand_animations=False)
        return tf.ensure_shape(img, [None, None, channels])

    return _decode


@Registry.register("preprocess_ops.resize")
@InKeyOutKey()
def get_resize(size: int | tuple[int, int], *, method: str = "bilinear", antialias: bool = True):
    """Resizes to a square `size` (or (h, w)) ignoring aspect ratio, as big_vision does.

    Returns float32. An image already at the target size (the prepared cache) is only cast,
    because resizing it would cost time and change nothing.
    """
    h, w = (size, size) if isinstance(size, int) else size

    def _resize(image: tf.Tensor) -> tf.Tensor:
        same = tf.logical_and(tf.shape(image)[0] == h, tf.shape(image)[1] == w)
        out = tf.cond(
            same,
            lambda: tf.cast(image, tf.float32),
            lambda: tf.image.resize(image, [h, w], method=method, antialias=antialias),
        )
        return tf.ensure_shape(out, [h, w, image.shape[-1]])

    return _resize


@Registry.register("preprocess_ops.value_range")
@InKeyOutKey()
def get_value_range(
    vmin: float = -1.0,
    vmax: float = 1.0,
    in_min: float = 0.0,
    in_max: float = 255.0,
    clip_values: bool = False,
):
    """Maps [in_min, in_max] linearly to [vmin, vmax] (float32)."""

    def _value_range(image: tf.Tensor) -> tf.Tensor:
        x = (tf.cast(image, tf.float32) - in_min) / (in_max - in_min)
        x = vmin + x * (vmax - vmin)
        return tf.clip_by_value(x, vmin, vmax) if clip_values else x

    return _value_range
