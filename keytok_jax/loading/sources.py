"""Where tensors come from: safetensors (single or sharded), PyTorch ``.bin`` (read without
PyTorch), and GGUF (dequantized with the ``gguf`` package). Every source answers ``get(name)`` with
a numpy array in the transformers layout and names its file in errors."""
from __future__ import annotations

import json
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np

from ..errors import KeytokError


class WeightError(KeytokError, ValueError):
    """A checkpoint is missing a tensor, has a wrong shape or cannot be read."""


class TensorSource:
    files: list[Path]

    def names(self) -> list[str]:
        raise NotImplementedError

    def get(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def file_of(self, name: str) -> str:
        return str(self.files[0]) if len(self.files) == 1 else ", ".join(str(f) for f in self.files)

    def __contains__(self, name: str) -> bool:
        return name in set(self.names())

    def missing(self, name: str, why: str = "") -> WeightError:
        return WeightError(f"missing tensor {name!r} in {self.file_of(name)}{why}")

    # Partial reads: sources that can read part of a tensor from the file without the rest.
    can_slice = False

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.get(name).shape)

    def get_slice(self, name: str, index: tuple) -> np.ndarray:
        return self.get(name)[index]


class SafetensorsSource(TensorSource):
    def __init__(self, files: list[Path], index: dict[str, str] | None = None):
        from safetensors import safe_open

        self.files = files
        self._open = {}
        self._where: dict[str, Path] = {}
        for f in files:
            try:
                handle = safe_open(str(f), framework="numpy")
            except Exception as e:  # truncated or not a safetensors file
                raise WeightError(f"cannot read safetensors file {f}: {e}") from e
            self._open[f] = handle
            for n in handle.keys():
                self._where[n] = f

    def names(self):
        return list(self._where)

    def __contains__(self, name):
        return name in self._where

    def file_of(self, name):
        return str(self._where.get(name) or super().file_of(name))

    def get(self, name):
        if name not in self._where:
            raise self.missing(name)
        return self._open[self._where[name]].get_tensor(name)

    can_slice = True

    def shape(self, name):
        if name not in self._where:
            raise self.missing(name)
        return tuple(self._open[self._where[name]].get_slice(name).get_shape())

    def get_slice(self, name, index):
        """Only the bytes of ``tensor[index]`` are read (safetensors maps the file)."""
        if name not in self._where:
            raise self.missing(name)
        return self._open[self._where[name]].get_slice(name)[index]


# ---------------------------------------------------------------- PyTorch .bin without PyTorch

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage, offset, size, stride, *_args):
    itemsize = storage.dtype.itemsize
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data, *_args):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Reads the state dict of ``torch.save`` with only tensor-rebuilding globals allowed: no code
    from the file ever runs."""

    def __init__(self, fh, zf: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(fh)
        self.zf, self.prefix, self.path = zf, prefix, path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(_TORCH_STORAGE_DTYPES[name])
        raise WeightError(f"{self.path}: refusing to unpickle {module}.{name} (not a plain state dict)")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage":
            raise WeightError(f"{self.path}: unknown persistent id {kind!r}")
        if key not in self._storages:
            raw = self.zf.read(f"{self.prefix}/data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
        return self._storages[key]


def read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightError(f"cannot read {path}: not a zip-format torch checkpoint ({e})") from e
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise WeightError(f"{path}: no data.pkl inside; not a torch.save checkpoint")
        prefix = pkl[0][: -len("/data.pkl")] if "/" in pkl[0] else ""
        with zf.open(pkl[0]) as fh:
            try:
                state = _RestrictedUnpickler(fh, zf, prefix, path).load()
            except WeightError:
                raise
            except Exception as e:
                raise WeightError(f"cannot unpickle {path}: {e}") from e
    if not isinstance(state, dict):
        raise WeightError(f"{path}: expected a state dict, found {type(state).__name__}")
    return dict(state)


class TorchBinSource(TensorSource):
    def __init__(self, files: list[Path]):
        self.files = files
        self._loaded = False

    def _load(self):
        if self._loaded:
            return
        self._tensors: dict[str, np.ndarray] = {}
        self._where: dict[str, Path] = {}
        for f in self.files:
            for n, t in read_torch_bin(f).items():
                self._tensors[n], self._where[n] = t, f
        self._loaded = True

    def names(self):
        self._load()
        return list(self._tensors)

    def __contains__(self, name):
        self._load()
        return name in self._tensors

    def file_of(self, name):
        self._load()
        return str(self._where.get(name) or super().file_of(name))

    def get(self, name):
        self._load()
        if name not in self._tensors:
            raise self.missing(name)
        return self._tensors[name]


class OverlaySource(TensorSource):
    """``base`` with some tensors given from elsewhere (a borrowed LM head): ``extra`` maps a name
    to (array, file it came from); those names answer from ``extra``, every other from ``base``."""

    def __init__(self, base: TensorSource, extra: dict[str, tuple[np.ndarray, str]]):
        self.base, self.extra = base, extra
        self.files = list(base.files)
        self.can_slice = base.can_slice

    def names(self):
        return list(dict.fromkeys(self.base.names() + list(self.extra)))

    def __contains__(self, name):
        return name in self.extra or name in self.base

    def file_of(self, name):
        return self.extra[name][1] if name in self.extra else self.base.file_of(name)

    def get(self, name):
        return self.extra[name][0] if name in self.extra else self.base.get(name)

    def shape(self, name):
        return tuple(self.extra[name][0].shape) if name in self.extra else self.base.shape(name)

    def get_slice(self, name, index):
        return self.extra[name][0][index] if name in self.extra else self.base.get_slice(name, index)


def weight_files(folder: Path) -> tuple[str, list[Path], Path | None]:
    """(``"st"`` or ``"bin"``, weight files, index file or None) of a Hugging Face folder:
    safetensors preferred, then pytorch_model.bin; single files or sharded with an index."""
    for index_name, kind in (("model.safetensors.index.json", "st"), ("pytorch_model.bin.index.json", "bin")):
        index_path = folder / index_name
        if index_path.exists():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            files = [folder / f for f in sorted(set(weight_map.values()))]
            for f in files:
                if not f.exists():
                    raise WeightError(f"{index_path} lists shard {f.name}, which is missing")
            return kind, files, index_path
    for name, kind in (("model.safetensors", "st"), ("pytorch_model.bin", "bin")):
        if (folder / name).exists():
            return kind, [folder / name], None
    raise WeightError(f"no weight file in {folder} (looked for model.safetensors[.index.json] "
                      f"and pytorch_model.bin[.index.json])")


def folder_source(folder: Path) -> TensorSource:
    """The weights of a Hugging Face folder (see :func:`weight_files`)."""
    kind, files, _ = weight_files(folder)
    return SafetensorsSource(files) if kind == "st" else TorchBinSource(files)
