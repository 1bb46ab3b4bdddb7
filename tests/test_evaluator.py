"""The evaluator's test protocol: flip averaging, the feature choice and L2 normalisation do
what they say, inside the one function every path runs."""

import numpy as np
from flax import nnx

from dualattn.evaluation.evaluator import protocol_features as protocol
from dualattn.models import ReIDNet


def test_flip_feature_and_normalisation_choices_do_what_they_say(tiny_model_kwargs):
    model = ReIDNet(5, **tiny_model_kwargs, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 32, 3), dtype=np.uint8)
    mirror = images[:, :, ::-1]

    def feats(x, **kw):
        return np.asarray(protocol(graphdef, state, x, **kw))

    plain, flipped = feats(images), feats(images, flip=True)
    np.testing.assert_allclose(flipped, (plain + feats(mirror)) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats(mirror, flip=True), flipped, rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain, flipped)
    # "after" is the BNNeck applied to "before" with its running statistics.
    before, after = feats(images, feature="before"), feats(images, feature="after")
    bn = model.bottleneck
    expected = (before - bn.mean[...]) / np.sqrt(bn.var[...] + bn.epsilon) * bn.scale[...]
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(after, plain)  # the model's default
    unit = feats(images, normalize_features=True)
    np.testing.assert_allclose(unit, plain / np.linalg.norm(plain, axis=1, keepdims=True),
                               rtol=1e-6)
    assert unit.dtype == np.float32
