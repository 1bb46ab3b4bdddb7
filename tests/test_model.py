"""A run's model: started from ImageNet weights, restored alone for inference, and carried to
PyTorch weight files and back (the convert command)."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from dualattn.interop.torch_model import TorchReIDNet
from dualattn.run.checkpoint import Checkpointer
from dualattn.run.model import create_train_state, export_weights, import_weights, load_model
from dualattn.run.workdir import RunDir
from dualattn.weights.files import WeightsFileError, read_state_dict, write_safetensors
from dualattn.weights.state_dict import ConversionError
from tests.helpers import (
    assert_one_error_line,
    evaluate_run,
    run_command,
    tiny_config,
    torchvision_state_dict,
)

pytestmark = pytest.mark.filterwarnings("ignore:Market-1501 counts")


def test_pretrained_backbone_is_loaded_by_the_trainer(data_paths, tmp_path):
    sd = torchvision_state_dict()
    torch.save(sd, tmp_path / "r50.pth")
    c = tiny_config(data_paths)
    c.pretrained = str(tmp_path / "r50.pth")
    train = create_train_state(c, 6, 10)
    model = nnx.merge(train.graphdef, train.state)["model"]
    np.testing.assert_array_equal(model.backbone.layer4[0].conv3.kernel[...],
                                  sd["layer4.0.conv3.weight"].numpy().transpose(2, 3, 1, 0))
    c.pretrained = str(tmp_path / "missing.pth")
    with pytest.raises(WeightsFileError, match="does not exist"):
        create_train_state(c, 6, 10)


def test_inference_restores_the_model_alone(trained_run):
    """load_model reads the checkpoint's ``model`` part, not the optimizer's moments, with
    the class count its metadata records."""
    c, run = trained_run
    num_classes = Checkpointer(RunDir(run)).metadata("latest")["num_classes"]
    loaded = load_model(c, run, "latest")
    train = create_train_state(c, num_classes, 1, pretrained=False)
    assert jax.tree.structure(loaded.state) == jax.tree.structure(train.state["model"])
    assert loaded.step == RunDir(run).checkpoint_steps("latest")[-1]


def test_convert_round_trips_a_run_through_pytorch_files(trained_run, tmp_path):
    """Run -> .safetensors (loads strictly into the twin) -> new run: same evaluation; the
    classifier size comes from the files, so a 9-class model evaluates on this dataset too."""
    c, run = trained_run
    _, best = evaluate_run(c, run, "best")
    export_weights(c, run, tmp_path / "model.safetensors")
    state_dict = read_state_dict(tmp_path / "model.safetensors")
    twin = TorchReIDNet(state_dict["classifier.weight"].shape[0], **c.model.to_dict())
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)

    import_weights(c, tmp_path / "model.safetensors", tmp_path / "imported")
    step, again = evaluate_run(c, tmp_path / "imported", "best")
    assert step == 0 and again.rates() == pytest.approx(best.rates(), abs=1e-6)
    with pytest.raises(ConversionError, match="already holds checkpoints"):
        import_weights(c, tmp_path / "model.safetensors", tmp_path / "imported")

    state_dict["classifier.weight"] = np.zeros((9, state_dict["classifier.weight"].shape[1]),
                                               np.float32)
    write_safetensors(tmp_path / "nine.safetensors", state_dict)
    import_weights(c, tmp_path / "nine.safetensors", tmp_path / "nine")
    _, nine = evaluate_run(c, tmp_path / "nine", "best")
    # The test feature does not use the classifier.
    assert nine.rates() == pytest.approx(best.rates(), abs=1e-6)
    del state_dict["classifier.weight"]
    write_safetensors(tmp_path / "backbone.safetensors", state_dict)
    with pytest.raises(ConversionError, match="--config.pretrained="):
        import_weights(c, tmp_path / "backbone.safetensors", tmp_path / "other")


@pytest.mark.parametrize("args,message", [
    (["notes.txt", "out"], "is neither a run's workdir nor a"),
    (["."], "give IN and OUT"),
    (["RUN", "missing/model.safetensors"], "OUT missing/model.safetensors: folder missing does "
                                           "not exist"),
])
def test_convert_refuses_what_it_cannot_convert(args, message, trained_run):
    args = [str(trained_run[1]) if a == "RUN" else a for a in args]
    proc = run_command("dualattn.convert", "--config", "configs/tiny.py", *args)
    assert_one_error_line(proc, message)
