"""Weight files read and written without torch and without executing pickled code.

- ``.safetensors``: through the ``safetensors`` package (which reads no code either).
- ``.pth`` / ``.pt`` / ``.bin`` (torch's zip format): ``data.pkl`` is unpickled with a
  whitelist of exactly the constructors a tensor state dict needs (``OrderedDict``, torch's
  ``_rebuild_tensor_v2`` / ``_rebuild_parameter`` and the typed storages); anything else, e.g. a
  pickle that would call ``os.system``, is refused. Tensors are rebuilt from the archive's raw
  storage files as NumPy arrays.

Writing ``.pth`` needs torch (imported only then); ``.safetensors`` does not.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from dualattn.errors import UserError
from dualattn.run.workdir import atomic_output


class WeightsFileError(UserError, ValueError):
    """The weights file cannot be used; the message says why and what to do."""


_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .safetensors file (through the ``safetensors`` package)."""
    try:
        return dict(safetensors.numpy.load_file(str(path)))
    except (SafetensorError, ValueError, TypeError, KeyError) as e:
        raise WeightsFileError(f"{path} is not a complete .safetensors file ({e}); export or "
                               "download it again") from e


def write_safetensors(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a .safetensors file (``atomic_output``: an interrupted write never
    leaves a truncated file under ``path``)."""
    with atomic_output(path) as tmp:
        safetensors.numpy.save_file({name: np.require(np.asarray(value), requirements="C")
                                     for name, value in arrays.items()}, str(tmp))


def _rebuild_tensor(storage: np.ndarray, offset, size, stride, *_args):
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))
    return np.array(view)  # contiguous copy


def _rebuild_parameter(data, *_args):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles tensor state dicts only; every other global is refused."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(file)
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            import collections
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise WeightsFileError(
            f"{self.path} asks to run {module}.{name} when loaded; only tensor state dicts are "
            "read. Re-save the weights alone (torch.save(model.state_dict(), ...)) or as "
            ".safetensors")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage" or storage_type not in _STORAGE_DTYPES:
            raise WeightsFileError(f"{self.path}: unsupported storage {pid[:2]}")
        data = self.archive.read(f"{self.prefix}data/{key}")
        return np.frombuffer(data, dtype=_STORAGE_DTYPES[storage_type])


def read_torch_zip(path: Path) -> dict:
    if not zipfile.is_zipfile(path):
        raise WeightsFileError(
            f"{path} is not in torch's zip format (a legacy torch file, or not a torch file); "
            "re-save it with a current torch.save, or convert it to .safetensors")
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise WeightsFileError(f"{path}: expected one data.pkl in the archive")
        prefix = pkl[0][:-len("data.pkl")]
        if archive.read(f"{prefix}byteorder").decode().strip() != "little" \
                if f"{prefix}byteorder" in archive.namelist() else False:
            raise WeightsFileError(f"{path} was saved on a big-endian machine")
        with archive.open(pkl[0]) as f:
            try:
                return _StateDictUnpickler(f, archive, prefix, path).load()
            except WeightsFileError:
                raise
            except Exception as e:  # noqa: BLE001 - corrupt archives fail in many ways
                raise WeightsFileError(f"{path} could not be read ({type(e).__name__}: "
                                             f"{e})") from e


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A flat ``name -> array`` dict from a weights file; unwraps ``{"state_dict": ...}`` /
    ``{"model": ...}`` training checkpoints and DataParallel's ``module.`` prefix."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsFileError(f"pretrained weights file {path} does not exist")
    state = read_safetensors(path) if path.suffix == ".safetensors" else read_torch_zip(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise WeightsFileError(f"{path} holds a {type(state).__name__}, not a state dict")
    arrays = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, np.ndarray)}
    if not arrays:
        raise WeightsFileError(f"{path} contains no tensors")
    return arrays


TORCH_SUFFIXES = (".pth", ".pt", ".bin")


def write_state_dict(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as ``.safetensors`` or, through torch, a ``.pth``/``.pt``/``.bin`` file,
    through ``atomic_output``: an existing file is never half-overwritten."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return write_safetensors(path, arrays)
    if path.suffix not in TORCH_SUFFIXES:
        raise WeightsFileError(f"{path}: write a .safetensors or {'/'.join(TORCH_SUFFIXES)} file")
    import torch

    with atomic_output(path) as tmp:
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, tmp)
