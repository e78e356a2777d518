"""Input sets, read one shard at a time and never loaded whole.

``describe_inputs(spec)`` tells the number of samples and the sample shape
(opening only file metadata); ``read_inputs(spec, start, stop)`` returns the
samples ``[start, stop)`` as a float64 numpy array ``[stop - start, *shape]``.

Random and Sobol inputs are a function of the global sample index only, so a
sample's value never depends on the shard size or the number of workers:
random numbers come from independent, seeded blocks of ``RANDOM_BLOCK``
samples; Sobol points are fast-forwarded to ``start``.

Example:
    >>> from pipeline.spec import UniformInputs
    >>> spec = UniformInputs(kind="uniform", n=10, shape=(2,))
    >>> read_inputs(spec, 3, 5).shape
    (2, 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from . import encoding, sobol, storage
from .errors import BadInput
from .parquet import open_parquet, read_rows
from .spec import (
    GridInputs,
    NormalInputs,
    NpyInputs,
    ParquetInputs,
    SobolInputs,
    UniformInputs,
    ZarrInputs,
)

RANDOM_BLOCK = 4096


class InputError(BadInput, ValueError):
    """An input file is missing or does not hold what the job says."""


@dataclass(frozen=True)
class InputInfo:
    """Size, sample shape and stored dtype of an input set."""

    n: int
    shape: tuple[int, ...]
    dtype: str = "float64"


def describe_inputs(spec) -> InputInfo:
    """Number of samples and sample shape, reading only metadata for files."""
    if isinstance(spec, (UniformInputs, NormalInputs, SobolInputs, GridInputs)):
        return InputInfo(spec.n, tuple(spec.shape))
    if isinstance(spec, NpyInputs):
        array = _open_npy(spec.path)
        return _limit(spec, InputInfo(array.shape[0], tuple(array.shape[1:]), str(array.dtype)), "inputs.path")
    if isinstance(spec, ZarrInputs):
        array = _open_zarr(spec)
        _refuse_incomplete_store(spec)
        return _limit(spec, InputInfo(array.shape[0], tuple(array.shape[1:]), str(array.dtype)), "inputs.array")
    if isinstance(spec, ParquetInputs):
        file, schema, rows = _parquet_meta(spec)
        _check_parquet_columns(spec, schema, file.metadata)
        return _limit(spec, InputInfo(rows, (len(spec.columns),)), "inputs.path")
    raise TypeError(f"unknown input spec {type(spec).__name__}")


def _refuse_complex(path: str, dtype, key: str) -> None:
    if np.dtype(dtype).kind == "c":
        raise InputError(
            f"{key}: {path} holds complex values ({np.dtype(dtype)}); the functions are real, so the imaginary "
            "part would be dropped: save the real and imaginary parts as two coordinates, e.g. "
            "numpy.save(path, numpy.stack([x.real, x.imag], axis=-1))"
        )


def _limit(spec, info: InputInfo, key: str) -> InputInfo:
    _refuse_complex(spec.path, info.dtype, key)
    if info.n == 0:
        raise InputError(f"{key}: {spec.path} holds no samples; point inputs.path at a non-empty array")
    if spec.n is not None:
        if spec.n > info.n:
            raise InputError(
                f"inputs.n: asks for {spec.n} samples but {spec.path} holds {info.n}; "
                f"use inputs.n <= {info.n} or leave it out to use all"
            )
        return InputInfo(spec.n, info.shape, info.dtype)
    return info


def read_inputs(spec, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)`` as float64 ``[stop - start, *sample_shape]``."""
    if stop <= start:
        raise ValueError(f"empty range [{start}, {stop})")
    if isinstance(spec, UniformInputs):
        return _random_rows(spec, start, stop, lambda g, k: g.uniform(spec.low, spec.high, size=k))
    if isinstance(spec, NormalInputs):
        return _random_rows(spec, start, stop, lambda g, k: g.normal(spec.mean, spec.std, size=k))
    if isinstance(spec, SobolInputs):
        return _sobol_rows(spec, start, stop)
    if isinstance(spec, GridInputs):
        return _grid_rows(spec, start, stop)
    if isinstance(spec, NpyInputs):
        return np.array(_open_npy(spec.path)[start:stop], dtype=np.float64)  # copy out of the memory map
    if isinstance(spec, ZarrInputs):
        array = _open_zarr(spec)
        stored = (array.attrs.get(encoding.ATTRIBUTE) or {}).get("dtype")  # a pipeline store's bfloat16: bits
        return np.asarray(encoding.uncast(np.asarray(array[start:stop]), stored), dtype=np.float64)
    if isinstance(spec, ParquetInputs):
        return _parquet_rows(spec, start, stop)
    raise TypeError(f"unknown input spec {type(spec).__name__}")


def _random_rows(spec, start: int, stop: int, draw) -> np.ndarray:
    width = math.prod(spec.shape)
    parts = []
    for block in range(start // RANDOM_BLOCK, (stop - 1) // RANDOM_BLOCK + 1):
        generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence([spec.seed, block])))
        values = draw(generator, (RANDOM_BLOCK, width))
        lo = max(start - block * RANDOM_BLOCK, 0)
        hi = min(stop - block * RANDOM_BLOCK, RANDOM_BLOCK)
        parts.append(values[lo:hi])
    return np.concatenate(parts).reshape(stop - start, *spec.shape)


def _sobol_rows(spec: SobolInputs, start: int, stop: int) -> np.ndarray:
    unit = sobol.points(start, stop, math.prod(spec.shape), seed=spec.seed, scramble=spec.scramble)
    return (spec.low + (spec.high - spec.low) * unit).reshape(stop - start, *spec.shape)


def _grid_rows(spec: GridInputs, start: int, stop: int) -> np.ndarray:
    nums = [axis.num for axis in spec.axes]
    index = np.unravel_index(np.arange(start, stop), nums)
    columns = [np.linspace(a.low, a.high, a.num)[i] for a, i in zip(spec.axes, index)]
    return np.stack(columns, axis=1)


NPY_MAGIC = b"\x93NUMPY"


class RemoteNpy:
    """A ``.npy`` object in a bucket, read by byte range (a memory map's stand-in): ``shape``, ``dtype``, ``[a:b]``."""

    def __init__(self, url: str) -> None:
        self.url = url
        with storage.open_file(url) as file:
            version = np.lib.format.read_magic(file)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(file)
            self.offset = file.tell()
            size = file.seek(0, 2)  # the object's size: a cut-off upload is refused here, not by a failing shard
        if fortran and len(shape) > 1:
            raise InputError(
                f"inputs.path: {url} is stored in Fortran order; save it with numpy.save of a C-ordered array"
            )
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        needed = self.offset + self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))
        if size < needed:
            raise InputError(
                f"inputs.path: {url} is cut short: its header says {list(self.shape)} {self.dtype} ({needed} bytes), "
                f"the object holds {size} bytes; upload the whole file again"
            )

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        row = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        fs, path = storage.filesystem(self.url)
        data = storage.retry(fs.cat_file, path, start=self.offset + start * row, end=self.offset + stop * row)
        return np.frombuffer(data, dtype=self.dtype).reshape(stop - start, *self.shape[1:])


def _open_npy(path: str):
    """A memory-mapped local ``.npy`` or a byte-range reader of one in a bucket, with the same checks."""
    remote = storage.is_remote(path)
    if not (storage.isfile(path) if remote else Path(path).exists()):
        raise InputError(f"inputs.path: {path} does not exist; point it at a .npy file")
    if not remote and not Path(path).is_file():
        raise InputError(f"inputs.path: {path} is a directory, not a file; point it at a .npy file")
    with storage.open_file(path) if remote else open(path, "rb") as file:
        magic = file.read(len(NPY_MAGIC))
    if magic != NPY_MAGIC:
        raise InputError(
            f"inputs.path: {path} is not a .npy file (no NumPy header); save the samples with numpy.save, "
            "or use inputs.kind: parquet / zarr for those formats"
        )
    try:
        array = RemoteNpy(path) if remote else np.load(path, mmap_mode="r")
    except InputError:
        raise
    except (ValueError, OSError) as err:
        raise InputError(f"inputs.path: {path} is not a readable .npy file ({err})") from None
    if array.ndim < 1 or not np.issubdtype(array.dtype, np.number):
        raise InputError(
            f"inputs.path: {path} holds {array.dtype} of shape {array.shape}; need a numeric array [samples, ...]"
        )
    return array


def _open_zarr(spec: ZarrInputs):
    import zarr

    remote = storage.is_remote(spec.path)
    if not (storage.isfile(storage.join(spec.path, "zarr.json")) if remote else Path(spec.path).exists()):
        raise InputError(f"inputs.path: {spec.path} does not exist; point it at a Zarr store")
    try:
        group = zarr.open_group(storage.zarr_store(spec.path, read_only=True) if remote else spec.path, mode="r")
    except Exception as err:  # zarr raises several types for "not a store"
        raise InputError(f"inputs.path: {spec.path} is not a Zarr group ({err})") from None
    if spec.array not in group.array_keys():
        raise InputError(
            f"inputs.array: {spec.array!r} is not an array of {spec.path}; its arrays are {sorted(group.array_keys())}"
        )
    array = cast("zarr.Array", group[spec.array])  # an array: checked above
    if array.ndim < 1:
        raise InputError(f"inputs.array: {spec.array!r} is a scalar; need an array [samples, ...]")
    try:
        numeric = np.issubdtype(np.dtype(array.dtype), np.number)
    except TypeError:  # a Zarr data type numpy does not know (strings, structs)
        numeric = False
    if not numeric:
        raise InputError(
            f"inputs.array: {spec.array!r} of {spec.path} holds {array.dtype}; need a numeric array [samples, ...]"
        )
    return array


def _refuse_incomplete_store(spec: ZarrInputs) -> None:
    """A pipeline store as input must be complete: shards that never ran hold NaN fill, not samples."""
    import json

    if storage.is_remote(spec.path):
        from .store import committed_ids

        try:
            attrs = json.loads(storage.read_bytes(storage.join(spec.path, "zarr.json"))).get("attributes", {})
        except (OSError, ValueError):
            return
        if "format_version" not in attrs or "complete" not in attrs or attrs["complete"]:
            return
        done = sum(1 for _ in committed_ids(spec.path))  # one listing: no marker is read
        name = attrs.get("name") or attrs.get("spec", {}).get("name", "?")
        raise InputError(
            f"inputs.path: the store {spec.path} is not complete ({done} of {attrs.get('n_shards', '?')} shards "
            f"committed), so its {spec.array!r} holds NaN where shards are missing; finish it with "
            f"`pipeline submit <its job>` (job {name!r}) or point inputs.path at a complete store"
        )
    try:
        attrs = json.loads((Path(spec.path) / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return
    if "format_version" not in attrs or "complete" not in attrs or attrs["complete"]:
        return  # not a pipeline store, or a complete one
    from .store import committed_ids

    done = sum(1 for _ in committed_ids(spec.path))
    name = attrs.get("name") or attrs.get("spec", {}).get("name", "?")
    raise InputError(
        f"inputs.path: the store {spec.path} is not complete ({done} of {attrs.get('n_shards', '?')} shards "
        f"committed), so its {spec.array!r} holds NaN where shards are missing; finish it with "
        f"`pipeline submit <its job>` (job {name!r}) or point inputs.path at a complete store"
    )


def _parquet_meta(spec: ParquetInputs):

    remote = storage.is_remote(spec.path)
    if not (storage.exists(spec.path) if remote else Path(spec.path).exists()):
        raise InputError(f"inputs.path: {spec.path} does not exist; point it at a Parquet file")
    if not (storage.isfile(spec.path) if remote else Path(spec.path).is_file()):
        raise InputError(f"inputs.path: {spec.path} is a directory, not a file; point it at a Parquet file")
    try:
        file = open_parquet(spec.path)
    except Exception as err:  # pyarrow raises several types for a non-Parquet file
        raise InputError(
            f"inputs.path: {spec.path} is not a readable Parquet file ({err}); point it at a Parquet file, "
            "or use inputs.kind: npy / zarr for those formats"
        ) from None
    return file, file.schema_arrow, file.metadata.num_rows


def _check_parquet_columns(spec: ParquetInputs, schema, metadata=None) -> None:
    """Every column exists, is numeric (integer or floating point) and, per the file's statistics, has no nulls."""
    import pyarrow as pa

    for column in spec.columns:
        if column not in schema.names:
            raise InputError(f"inputs.columns: column {column!r} is not in {spec.path}; its columns are {schema.names}")
        kind = schema.field(column).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            numeric = [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
            raise InputError(
                f"inputs.columns: column {column!r} of {spec.path} has type {kind}; "
                f"choose numeric columns (integer or floating point): {numeric}"
            )
    if metadata is None:
        return
    nulls = dict.fromkeys(spec.columns, 0)
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for i in range(group.num_columns):
            chunk = group.column(i)
            if chunk.path_in_schema in nulls and chunk.is_stats_set and chunk.statistics.has_null_count:
                nulls[chunk.path_in_schema] += chunk.statistics.null_count
    for column in spec.columns:
        if nulls[column]:
            raise InputError(
                f"inputs.columns: column {column!r} of {spec.path} has {nulls[column]} null value(s), which would "
                "give NaN inputs; fill or drop the null rows"
            )


def _parquet_rows(spec: ParquetInputs, start: int, stop: int) -> np.ndarray:
    table = read_rows(open_parquet(spec.path), start, stop, spec.columns)
    return np.stack([table.column(c).to_numpy().astype(np.float64) for c in spec.columns], axis=1)
