"""The PyTorch twin computes what our network computes, on the same weights (f32, CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualattn.interop.convert import ConversionError, flax_to_torch, torch_to_flax
from dualattn.losses import reid_loss
from dualattn.models import ReIDNet

torch = pytest.importorskip("torch")
from dualattn.interop.torch_model import TorchReIDNet  # noqa: E402

TINY = dict(stage_sizes=(1, 1, 1, 1), width=8)


def perturbed_model(seed=0, **kw):
    """Tiny model with non-trivial BN statistics, BNNeck scale and an open attention gate."""
    model = ReIDNet(7, **{**TINY, **kw}, rngs=nnx.Rngs(seed))
    state = nnx.state(model)
    keys = iter(jax.random.split(jax.random.key(seed + 1), 10_000))
    for path, var in nnx.to_flat_state(state):
        v = var[...]
        if path[-1] in ("mean", "bias"):
            var[...] = 0.1 * jax.random.normal(next(keys), v.shape)
        elif path[-1] in ("var", "scale"):
            var[...] = jax.random.uniform(next(keys), v.shape, minval=0.5, maxval=1.5)
        elif path[-1] == "alpha":
            var[...] = jnp.asarray(0.5)
        elif path[-1] == "kernel" and path[0] == "classifier":
            var[...] = 0.1 * jax.random.normal(next(keys), v.shape)
    nnx.update(model, state)
    return model


def twin_of(model, **kw):
    twin = TorchReIDNet(7, **{**TINY, **kw})
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in flax_to_torch(model).items()},
                         strict=True)
    return twin


@pytest.fixture
def images():
    return np.asarray(jax.random.normal(jax.random.key(3), (6, 64, 32, 3)), np.float32)


def to_nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("switches", [{}, {"use_se": False}, {"use_sa": False},
                                      {"bnneck": False}, {"last_stride": 2}])
def test_eval_features_match(images, switches):
    model = perturbed_model(**switches)
    twin = twin_of(model, **switches).eval()
    ours = np.asarray(model(jnp.asarray(images), train=False))
    with torch.no_grad():
        theirs = twin(to_nchw(images)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_train_mode_outputs_losses_and_bn_statistics_match(images):
    model = perturbed_model()
    twin = twin_of(model).train()
    before = flax_to_torch(model)
    labels = np.array([0, 0, 1, 1, 2, 2])
    out = model(jnp.asarray(images), train=True)
    feats, logits = twin(to_nchw(images))
    np.testing.assert_allclose(out.features, feats.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.logits, logits.detach().numpy(), rtol=1e-5, atol=1e-5)
    ours = reid_loss(out.logits, out.features, jnp.asarray(labels))
    ce = torch.nn.functional.cross_entropy(logits.detach(), torch.from_numpy(labels),
                                         label_smoothing=0.1)
    assert float(ours.cross_entropy) == pytest.approx(ce.item(), rel=1e-5)
    # Running statistics after one train-mode pass (torch momentum 0.1 = Flax 0.9). Means match.
    # Variances differ by one known rule: torch blends in the *unbiased* batch variance
    # (x n/(n-1), n = values per channel), Flax the biased one. Rebuild torch's value from ours
    # with that factor: it must then agree to rounding. n is the batch (6) for the BNNeck and
    # B*H*W for the 2-D BNs, where the factor is within 1e-3 of 1.
    after, theirs = flax_to_torch(model), twin.state_dict()
    n_per_channel = {"bn1": 6 * 32 * 16, "layer4.0.bn3": 6 * 4 * 2,
                     "attention.value_bn": 6 * 4 * 2, "bottleneck": 6}
    for bn, n in n_per_channel.items():
        np.testing.assert_allclose(after[f"{bn}.running_mean"],
                                   theirs[f"{bn}.running_mean"].numpy(), rtol=1e-5, atol=1e-6)
        old = before[f"{bn}.running_var"]
        batch_var = (after[f"{bn}.running_var"] - 0.9 * old) / 0.1
        torch_rule = 0.9 * old + 0.1 * batch_var * n / (n - 1)
        # rtol 1e-4: recovering batch_var divides by 0.1, which scales f32 rounding up by 10.
        np.testing.assert_allclose(torch_rule, theirs[f"{bn}.running_var"].numpy(), rtol=1e-4,
                                   atol=1e-6)


def test_conversion_round_trips_exactly():
    model = perturbed_model()
    sd = flax_to_torch(model)
    other = ReIDNet(7, **TINY, rngs=nnx.Rngs(42))
    torch_to_flax(sd, other)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(other)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    twin_sd = {k: v.numpy() for k, v in twin_of(model).state_dict().items()}
    again = ReIDNet(7, **TINY, rngs=nnx.Rngs(5))
    torch_to_flax(twin_sd, again)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(a, b)


def test_conversion_errors_list_every_key():
    sd = flax_to_torch(perturbed_model())
    sd.pop("layer1.0.conv1.weight")
    sd["extra.weight"] = np.zeros(2)
    sd["classifier.weight"] = np.zeros((3, 3))
    with pytest.raises(ConversionError) as err:
        torch_to_flax(sd, ReIDNet(7, **TINY, rngs=nnx.Rngs(0)))
    msg = str(err.value)
    assert "missing: layer1.0.conv1.weight" in msg and "unexpected: extra.weight" in msg
    assert "shape: classifier.weight" in msg and "missing: classifier.weight" not in msg


def torch_triplet_hard(feats, labels, margin=0.3):
    """Batch-hard triplet as the PyTorch toolkits write it: masked max / min of distances."""
    sq = (feats ** 2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * feats @ feats.t()).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    dist_ap = torch.where(same, dist, torch.full_like(dist, -float("inf"))).max(1).values
    dist_an = torch.where(same, torch.full_like(dist, float("inf")), dist).min(1).values
    return torch.relu(dist_ap - dist_an + margin).mean()


# Parameters whose true gradient is exactly zero with a BNNeck: a constant on K shifts each
# softmax row uniformly (no effect), and a constant on V shifts every position of o, hence the
# pooled feature of every sample alike, which the BNNeck's batch normalisation and the triplet
# distances both cancel. Both frameworks compute rounding noise (~1e-10) there, and Adam's
# division by sqrt(v) turns noise into updates, so their trajectories differ by noise alone.
ZERO_GRADIENT = ("attention.key_bn.bias", "attention.value_bn.bias")


def test_gradients_and_three_adam_steps_match(images):
    from configs import tiny
    from dualattn.interop.names import to_torch_layout, torch_name
    from dualattn.train import create_optimizer

    model = perturbed_model()
    twin = twin_of(model).train()
    labels = np.array([0, 0, 1, 1, 2, 2])
    config = tiny.get_config()
    lr, wd = 1e-3, config.optim.weight_decay
    optimizer = nnx.Optimizer(model, create_optimizer(config, lr), wrt=nnx.Param)
    torch_opt = torch.optim.Adam([p for p in twin.parameters() if p.requires_grad], lr=lr,
                                 weight_decay=wd)

    @nnx.jit
    def jax_step(model, optimizer, x, y):
        def loss_fn(model):
            out = model(x, train=True)
            return reid_loss(out.logits, out.features, y).total
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, grads

    x, y = jnp.asarray(images), jnp.asarray(labels)
    xt, yt = to_nchw(images), torch.from_numpy(labels)
    for step in range(3):
        loss, grads = jax_step(model, optimizer, x, y)
        torch_opt.zero_grad()
        feats, logits = twin(xt)
        torch_loss = (torch.nn.functional.cross_entropy(logits, yt, label_smoothing=0.1)
                      + torch_triplet_hard(feats, yt))
        torch_loss.backward()
        if step == 0:
            assert float(loss) == pytest.approx(torch_loss.item(), rel=1e-5)
            ours = {}
            for path, g in nnx.to_flat_state(grads):
                ours[torch_name(path)] = to_torch_layout(path, np.asarray(g[...]))
            scale = max(np.abs(g).max() for g in ours.values())
            for name in ZERO_GRADIENT:
                assert np.abs(ours[name]).max() < 1e-6 * scale
                assert np.abs(dict(twin.named_parameters())[name].grad.numpy()).max() < 1e-6 * scale
            for name, p in twin.named_parameters():
                if p.requires_grad:  # the BNNeck bias is frozen in torch and absent in ours
                    np.testing.assert_allclose(ours[name], p.grad.numpy(), rtol=1e-4,
                                               atol=1e-5 * scale, err_msg=name)
        torch_opt.step()
    converted = flax_to_torch(model)
    for name, p in twin.named_parameters():
        if name not in ZERO_GRADIENT:
            np.testing.assert_allclose(converted[name], p.detach().numpy(), rtol=1e-4,
                                       atol=1e-6, err_msg=name)
