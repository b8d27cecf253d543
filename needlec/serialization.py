"""`save` and `load`: state dicts (of modules, optimizers, or any nesting of dicts, lists and
tuples of tensors, arrays and plain values) in a safe file format.

The file is a numpy `.npz` archive: one array per tensor or array, and the structure as JSON
in an entry of its own. Loading never unpickles anything, so a file from an untrusted source
can only hold numbers, strings and arrays.

>>> import needlec as nc, os, tempfile
>>> model = nc.nn.Linear(3, 2)
>>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
>>> nc.save(model.state_dict(), path)
>>> model.load_state_dict(nc.load(path))
>>> sorted(nc.load(path))
['bias', 'weight']
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from . import backend_ndarray as nd
from .autograd import Tensor

_FORMAT = "needlec-state/1"
_TREE = "__tree__"


def _encode(value: Any, arrays: list[np.ndarray], where: str) -> Any:
    """A JSON-ready description of `value`; its arrays are appended to `arrays`."""
    if isinstance(value, Tensor):
        arrays.append(value.numpy())
        return {"tensor": len(arrays) - 1, "requires_grad": bool(value.requires_grad)}
    if isinstance(value, np.ndarray | nd.NDArray):
        arr = np.asarray(value)
        if arr.dtype == object:
            raise TypeError(f"save: {where} is an object array; only numeric arrays are saved")
        arrays.append(arr)
        return {"array": len(arrays) - 1}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if not isinstance(k, str | int) or isinstance(k, bool):
                raise TypeError(f"save: key {k!r} in {where}; keys must be str or int")
            items.append([k, _encode(v, arrays, f"{where}[{k!r}]")])
        return {"dict": items}
    if isinstance(value, list | tuple):
        kind = "list" if isinstance(value, list) else "tuple"
        return {kind: [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    hint = " (save its .state_dict())" if hasattr(value, "state_dict") else ""
    raise TypeError(
        f"save: {where} is a {type(value).__name__}{hint}; a state dict holds tensors, numpy "
        "arrays, numbers, strings, None, and dicts, lists and tuples of them"
    )


def _decode(node: Any, arrays: Any, device) -> Any:
    if "tensor" in node:
        arr = arrays[f"a{node['tensor']}"]
        return Tensor(arr, device=device, dtype=arr.dtype, requires_grad=node["requires_grad"])
    if "array" in node:
        return arrays[f"a{node['array']}"]
    if "value" in node:
        return node["value"]
    if "dict" in node:
        return {k: _decode(v, arrays, device) for k, v in node["dict"]}
    if "list" in node:
        return [_decode(v, arrays, device) for v in node["list"]]
    if "tuple" in node:
        return tuple(_decode(v, arrays, device) for v in node["tuple"])
    raise ValueError(f"load: unknown entry {sorted(node)} in the file's structure")


def copy_into(t: Tensor, value: Any, where: str) -> None:
    """Write `value` (a tensor or an array) into tensor `t` in place: same shape, and a dtype
    of the same kind (a float into a float tensor); `where` names it in an error."""
    arr = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
    if arr.shape != t.shape:
        raise ValueError(f"{where}: shape {arr.shape} does not match {t.shape}")
    if not np.can_cast(arr.dtype, t.dtype, "same_kind"):
        raise TypeError(f"{where}: dtype {arr.dtype} cannot be stored in {t.dtype}")
    t.cached_data = nd.NDArray(arr.astype(t.dtype), device=t.device, dtype=t.dtype)


def save(obj: Any, path: str | os.PathLike) -> None:
    """Write a state dict (`model.state_dict()`, `opt.state_dict()`, or a dict, list or tuple
    nesting them with tensors, arrays and plain values) to `path` as a `.npz` archive."""
    arrays: list[np.ndarray] = []
    tree = {"format": _FORMAT, "root": _encode(obj, arrays, "the object")}
    entries = {f"a{i}": a for i, a in enumerate(arrays)}
    entries[_TREE] = np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8)
    with open(path, "wb") as f:  # np.savez would append ".npz" to a path without it
        np.savez(f, **entries)


def load(path: str | os.PathLike, device=None) -> Any:
    """Read what `save` wrote: tensors come back as Tensors (on `device`, by default the
    default device), arrays as numpy arrays. Nothing in the file is unpickled."""
    with np.load(path, allow_pickle=False) as archive:
        if _TREE not in archive.files:
            raise ValueError(f"load: {os.fspath(path)!r} is not a file written by needlec.save")
        tree = json.loads(archive[_TREE].tobytes().decode())
        if tree.get("format") != _FORMAT:
            raise ValueError(f"load: unknown format {tree.get('format')!r} in {os.fspath(path)!r}")
        arrays = {name: archive[name] for name in archive.files if name != _TREE}
    return _decode(tree["root"], arrays, device)


__all__ = ["load", "save"]
