import collections
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest
from flax import nnx

from dualattn.models import ReIDNet
from dualattn.weights.files import WeightsFileError, read_state_dict
from dualattn.weights.imagenet import load_backbone_weights
from tests.helpers import torchvision_state_dict

torch = pytest.importorskip("torch")
TINY = dict(stage_sizes=(1, 1, 1, 1), width=8)


def test_pth_reader_agrees_with_torch_weights_only_load(tmp_path):
    sd = torchvision_state_dict()
    sd["half"] = torch.randn(3, 4).half()
    sd["transposed"] = torch.randn(4, 5).t()  # non-contiguous strides
    sd["bf16"] = torch.randn(6).bfloat16()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    ours = read_state_dict(tmp_path / "w.pth")
    reference = torch.load(tmp_path / "w.pth", weights_only=True)["state_dict"]
    assert sorted(ours) == sorted(k.removeprefix("module.") for k in reference)
    for k, v in reference.items():
        np.testing.assert_array_equal(ours[k.removeprefix("module.")],
                                      v.float().numpy() if v.dtype == torch.bfloat16
                                      else v.numpy())


def test_safetensors_reader(tmp_path):
    from safetensors.numpy import save_file
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(2, np.int64)}
    save_file(arrays, str(tmp_path / "w.safetensors"))
    ours = read_state_dict(tmp_path / "w.safetensors")
    for k, v in arrays.items():
        np.testing.assert_array_equal(ours[k], v)


def test_safetensors_writer_is_read_by_the_reference_library(tmp_path):
    from safetensors.numpy import load_file

    from dualattn.weights.files import write_safetensors
    arrays = {"scalar": np.float32(0.5) * np.ones((), np.float32),
              "w": np.arange(24, dtype=np.float32).reshape(2, 3, 4).transpose(2, 0, 1),
              "i": np.arange(3, dtype=np.int64)}
    write_safetensors(tmp_path / "w.safetensors", arrays)
    theirs = load_file(str(tmp_path / "w.safetensors"))
    assert sorted(theirs) == sorted(arrays)
    for k, v in arrays.items():
        assert theirs[k].shape == v.shape
        np.testing.assert_array_equal(theirs[k], v)


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"conv1.weight": Exploit()}))
    with pytest.raises(WeightsFileError, match=r"asks to run (posix|os)\.system"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_not_a_zip_or_missing(tmp_path):
    (tmp_path / "old.pth").write_bytes(b"\x80\x02legacy torch format")
    with pytest.raises(WeightsFileError, match="zip format"):
        read_state_dict(tmp_path / "old.pth")
    with pytest.raises(WeightsFileError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")


@pytest.mark.parametrize("cut", [4, 20, 100])
def test_truncated_safetensors_is_a_weights_error(tmp_path, cut):
    """A file cut short (an interrupted download or copy) is refused by name, whether the cut
    falls in the header or in the tensors; the original round-trips, bfloat16 included."""
    import ml_dtypes

    from dualattn.weights.files import write_safetensors

    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4),
              "scale": np.asarray(2.0, np.float32), "b": np.ones(3, ml_dtypes.bfloat16)}
    write_safetensors(tmp_path / "full.safetensors", arrays)
    back = read_state_dict(tmp_path / "full.safetensors")
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        np.testing.assert_array_equal(back[name], value)
    raw = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:cut] if cut < 50 else raw[:-cut // 10])
    with pytest.raises(WeightsFileError, match="is not a complete .safetensors file"):
        read_state_dict(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("with_se", [False, True])
def test_torchvision_weights_land_in_the_backbone(tmp_path, with_se):
    sd = torchvision_state_dict(with_se=with_se)
    torch.save(sd, tmp_path / "r50.pth")
    model = ReIDNet(5, **TINY, rngs=nnx.Rngs(0))
    se_before = np.asarray(model.backbone.layer1[0].se.fc1.kernel[...])
    untouched = jax.tree.map(np.asarray, (nnx.state(model.attention), nnx.state(model.classifier)))
    counts = load_backbone_weights(model, tmp_path / "r50.pth")
    bb = model.backbone
    np.testing.assert_array_equal(bb.conv1.kernel[...],
                                  sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(bb.layer2[0].downsample_bn.var[...],
                                  sd["layer2.0.downsample.1.running_var"].numpy())
    np.testing.assert_array_equal(bb.layer3[0].bn2.scale[...], sd["layer3.0.bn2.weight"].numpy())
    se = np.asarray(bb.layer1[0].se.fc1.kernel[...])
    if with_se:
        np.testing.assert_array_equal(se, sd["layer1.0.se.fc1.weight"].numpy()[:, :, 0, 0].T)
        assert counts["fresh_se"] == 0
    else:
        np.testing.assert_array_equal(se, se_before)
        assert counts["fresh_se"] == 16
    for a, b in zip(jax.tree.leaves(untouched),
                    jax.tree.leaves((nnx.state(model.attention), nnx.state(model.classifier))),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_legacy_seresnet_names_load(tmp_path):
    """timm's legacy_seresnet50 (Cadene's names): stem under layer0, SE as se_module."""
    sd = torchvision_state_dict(with_se=True)
    legacy = collections.OrderedDict()
    for k, v in sd.items():
        k = k.replace(".se.", ".se_module.")
        k = "last_linear." + k.removeprefix("fc.") if k.startswith("fc.") else k
        legacy[f"layer0.{k}" if k.startswith(("conv1.", "bn1.")) else k] = v
    torch.save(legacy, tmp_path / "legacy.pth")
    model = ReIDNet(5, **TINY, rngs=nnx.Rngs(0))
    counts = load_backbone_weights(model, tmp_path / "legacy.pth")
    assert counts == {"loaded": len([k for k in sd if not k.startswith("fc.")
                                     and "num_batches" not in k]),
                      "fresh_se": 0, "legacy_senet": True}
    bb = model.backbone
    np.testing.assert_array_equal(bb.bn1.mean[...], sd["bn1.running_mean"].numpy())
    np.testing.assert_array_equal(bb.layer4[0].se.fc2.bias[...], sd["layer4.0.se.fc2.bias"].numpy())


def test_weights_for_another_architecture_list_every_problem(tmp_path):
    sd = torchvision_state_dict(width=16)  # twice as wide as the model
    del sd["layer4.0.conv3.weight"]
    sd["head.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "other.pth")
    model = ReIDNet(5, **TINY, rngs=nnx.Rngs(0))
    before = np.asarray(model.backbone.conv1.kernel[...])
    with pytest.raises(WeightsFileError) as err:
        load_backbone_weights(model, tmp_path / "other.pth")
    message = str(err.value)
    assert "missing from the file: layer4.0.conv3.kernel" in message
    assert "not in the backbone: head.weight" in message
    assert "shape mismatch: conv1.weight" in message
    np.testing.assert_array_equal(model.backbone.conv1.kernel[...], before)  # nothing changed


def test_torchvision_checkpoint_loads_into_the_twin_as_into_ours(tmp_path):
    """The same torchvision-layout file initialises both frameworks' backbones identically."""
    from dualattn.interop.torch_model import TorchReIDNet
    from dualattn.weights.state_dict import flax_to_torch

    sd = torchvision_state_dict()
    torch.save(sd, tmp_path / "r50.pth")
    model = ReIDNet(5, **TINY, rngs=nnx.Rngs(0))
    load_backbone_weights(model, tmp_path / "r50.pth")
    twin = TorchReIDNet(5, **TINY)
    missing, unexpected = twin.load_state_dict(sd, strict=False)
    assert sorted(unexpected) == ["fc.bias", "fc.weight"]
    assert all(k.startswith(("attention.", "bottleneck.", "classifier.")) or ".se." in k
               for k in missing)
    ours = flax_to_torch(model)
    for name, value in twin.state_dict().items():
        if name in sd and not name.endswith("num_batches_tracked"):  # a counter we do not keep
            np.testing.assert_array_equal(ours[name], value.numpy(), err_msg=name)
