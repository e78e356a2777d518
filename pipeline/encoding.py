"""How result arrays are stored: packed symmetric tensors, selected entries and outputs, stored dtype, codec, Zarr shards.

The engine computes full quantities in the compute dtype; the job file may ask
the store to keep less (``store.dtype``, ``store.encoding``,
``store.compression_level``, ``store.shards``):

- ``packed: true`` (hessian, dK): only the unique entries of the symmetric
  input axes, ``i1 <= i2 <= ... <= ik`` in lexicographic order:
  ``C(d+k-1, k)`` per output instead of ``d**k`` (``d(d+1)/2`` for a Hessian);
- ``entries: [[0, 0], [1, 1]]`` (jacobian, hessian, dK): only those entries
  (one index per input axis);
- ``outputs: [0, 5]`` (any quantity of a function with one output axis): only
  those outputs;
- ``dtype`` (per array, or ``store.dtype`` for every result array): float32,
  float16 or bfloat16 (kept as its upper 16 bits in a ``uint16`` array: Zarr
  v3 has no bfloat16), rounded to nearest even from the computed values.

A stored array that differs from the full quantity carries the attribute
``pipeline_encoding`` (JSON: the full shape and dims, the stored entries, the
outputs kept, the stored dtype, and the rounding error measured on the
driver's check). :func:`decode` turns a Dataset opened with plain
``xarray.open_zarr`` back into the full quantities, lazily (an xarray lazy
backend array: only the samples indexed are read and unpacked);
``pipeline.open_results`` calls it. Entries that are not all of a symmetric
tensor's unique ones are shown as an ``<name>_entry`` axis with one
coordinate per input axis (``<name>_i1``, ``<name>_i2``, ...); ``open_results``
then labels those and ``<name>_output`` with the job's names
(``labels.label_selections``).

Example:
    >>> unique_entries(3, 2)
    [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    >>> bits = to_bfloat16_bits(np.array([1.0, 3.14159], np.float32))
    >>> from_bfloat16_bits(bits).tolist()
    [1.0, 3.140625]
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from dataclasses import replace
from typing import Any

import numpy as np

ATTRIBUTE = "pipeline_encoding"
LOSSY = ("float16", "bfloat16")
FLOAT16_ROUNDOFF = 2.0**-11  # of the largest magnitude, while that is a normal float16 number
BF16_NAN = 0x7FC0
SYMMETRIC = ("hessian",)  # and dK, k >= 2


def unique_entries(d: int, order: int) -> list[tuple[int, ...]]:
    """The unique entries of a symmetric order-``order`` tensor on ``d`` inputs: ``C(d+order-1, order)``."""
    return list(itertools.combinations_with_replacement(range(d), order))


def quantity_order(name: str) -> int:
    return {"jacobian": 1, "hessian": 2}.get(name) or (int(name[1:]) if name[:1] == "d" and name[1:].isdigit() else 0)


def is_symmetric(name: str) -> bool:
    return quantity_order(name) >= 2


# ------------------------------------------------------------------ dtypes


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float -> bfloat16 bit patterns (uint16), rounded to nearest even, NaN kept NaN."""
    with np.errstate(over="ignore"):  # float64 beyond float32's range: Inf, counted by ``overflow_count``
        f32 = np.ascontiguousarray(values, dtype=np.float32)
    bits = f32.view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(f32), np.uint16(BF16_NAN), rounded)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


def stored_numpy_dtype(dtype: str) -> str:
    return "uint16" if dtype == "bfloat16" else dtype


def cast(values: np.ndarray, dtype: str | None) -> np.ndarray:
    """Values in the stored representation of ``dtype`` (None: unchanged)."""
    if dtype is None or dtype == str(values.dtype):
        return values
    if dtype == "bfloat16":
        return to_bfloat16_bits(values)
    with np.errstate(over="ignore"):  # a float16 overflow becomes Inf: counted by ``overflow_count``
        return values.astype(dtype)


def uncast(stored: np.ndarray, dtype: str | None) -> np.ndarray:
    """Stored values back as floats (float32 for the 16-bit dtypes)."""
    if dtype == "bfloat16":
        return from_bfloat16_bits(stored)
    if dtype == "float16":
        return stored.astype(np.float32)
    return stored


# ---------------------------------------------------------------- per array


def array_encoding(spec, name: str) -> dict[str, Any] | None:
    """What ``spec`` asks for array ``name``: {dtype, packed, entries, outputs}, or None for the full array."""
    store = spec.store
    if name in getattr(spec, "fixed", {}) or name == "inputs":
        return None
    own = (getattr(store, "encoding", None) or {}).get(name)
    dtype = (own.dtype if own and own.dtype else None) or getattr(store, "dtype", None)
    compute = getattr(getattr(spec, "derivatives", None), "dtype", None) or getattr(
        getattr(spec, "solver", None), "dtype", None
    )
    if dtype == compute:
        dtype = None
    packed = bool(own and own.packed)
    entries = [tuple(e) for e in own.entries] if own and own.entries else None
    outputs = list(own.outputs) if own and own.outputs else None
    if dtype is None and not packed and entries is None and outputs is None:
        return None
    return {"dtype": dtype, "packed": packed, "entries": entries, "outputs": outputs}


def resolve(name: str, enc: dict[str, Any], shape: tuple[int, ...], dims: tuple[str, ...], key: str) -> dict[str, Any]:
    """Check ``enc`` against the array's per-sample ``shape``/``dims`` and add the stored shape/dims.

    Raises ``ValueError`` naming ``key`` (``store.encoding.<name>``) with the fix.
    """
    order = quantity_order(name)
    n_in = 0 if order == 0 else (len(shape) - _out_ndim(name, shape, dims)) // order
    out_ndim = len(shape) - n_in * order
    stored_shape, stored_dims = list(shape), list(dims)
    entries = enc.get("entries")
    if enc.get("packed") and not is_symmetric(name):
        raise ValueError(
            f"{key}.packed: only symmetric tensors (hessian, d3, d4, ...) can be packed, not {name}; "
            "remove packed or use entries"
        )
    if (enc.get("packed") or entries) and order and n_in != 1:
        raise ValueError(
            f"{key}: packed/entries need a function with one input axis; {name} has input shape "
            f"{list(shape[out_ndim : out_ndim + n_in])}"
        )
    if entries is not None and order == 0:
        raise ValueError(f"{key}.entries: {name} has no input axes to select; remove entries (use outputs)")
    d = shape[-1] if order else 0
    if enc.get("packed"):
        entries = entries or unique_entries(d, order)
    if entries is not None:
        for entry in entries:
            if len(entry) != order or any(not 0 <= i < d for i in entry):
                raise ValueError(
                    f"{key}.entries: entry {list(entry)} is not an entry of {name} (one index per input axis, "
                    f"{order} of them, each from 0 to {d - 1}); e.g. {[0] * order}"
                )
        if len(set(entries)) != len(entries):
            raise ValueError(f"{key}.entries: some entries are listed twice; list each once")
        stored_shape = stored_shape[:out_ndim] + [len(entries)]
        stored_dims = stored_dims[:out_ndim] + [f"{name}_entry"]
    outputs = enc.get("outputs")
    if outputs is not None:
        if out_ndim != 1:
            raise ValueError(
                f"{key}.outputs: only a function with one output axis can keep chosen outputs; this one has {out_ndim}"
            )
        bad = [o for o in outputs if not 0 <= o < shape[0]]
        if bad or len(set(outputs)) != len(outputs):
            raise ValueError(
                f"{key}.outputs: {bad or outputs} must be distinct output indices from 0 to {shape[0] - 1}"
            )
        stored_shape[0] = len(outputs)
        stored_dims[0] = f"{name}_{dims[0]}"  # its own axis: the other arrays keep every output
        dims = (stored_dims[0], *dims[1:])
    unique = is_symmetric(name) and entries is not None and sorted(entries) == unique_entries(d, order)
    return {
        **enc,
        "entries": [list(e) for e in entries] if entries is not None else None,
        "unpack": bool(unique),  # every unique entry is there: read back as the full symmetric tensor
        "full_shape": list(shape),
        "full_dims": list(dims),  # the output axis renamed <name>_output when outputs are chosen
        "stored_shape": stored_shape,
        "stored_dims": stored_dims,
    }


def _out_ndim(name: str, shape, dims) -> int:
    return sum(1 for d in dims if d.startswith("output"))


def encode(values: np.ndarray, enc: dict[str, Any]) -> np.ndarray:
    """A block of computed values ``[sample, ...]`` in its stored form."""
    if enc.get("outputs") is not None:
        values = values[:, enc["outputs"]]
    if enc.get("entries") is not None:
        entries = np.asarray(enc["entries"])
        out = values.shape[1 : len(enc["stored_shape"])]
        flat = values.reshape(values.shape[0], *out, -1)
        d = enc["full_shape"][-1]
        index = np.ravel_multi_index(tuple(entries.T), (d,) * entries.shape[1])
        values = flat[..., index]
    return np.ascontiguousarray(cast(values, enc.get("dtype")))


# ------------------------------------------------------------- the plan


def apply(spec, prepared):
    """``prepared`` with every array stored as ``spec`` asks: layouts, attributes; raises SpecError on bad entries."""
    from .spec import SpecError

    layouts, attributes = [], {k: dict(v) for k, v in prepared.array_attributes.items()}
    used = set()
    for layout in prepared.plan.arrays:
        result = layout.shape and layout.dims[0] in ("sample", "case") and layout.name not in prepared.initial_arrays
        enc = array_encoding(spec, layout.name) if result else None  # not a sweep's case parameters
        if enc is None:
            layouts.append(layout)
            continue
        used.add(layout.name)
        try:
            enc = resolve(layout.name, enc, layout.shape[1:], layout.dims[1:], f"store.encoding.{layout.name}")
        except ValueError as err:
            raise SpecError([str(err)]) from None
        stored_dtype = stored_numpy_dtype(enc["dtype"]) if enc["dtype"] else layout.dtype
        enc["compute_dtype"] = layout.dtype
        layouts.append(
            replace(
                layout,
                shape=(layout.shape[0], *enc["stored_shape"]),
                dims=(layout.dims[0], *enc["stored_dims"]),
                chunks=(layout.chunks[0], *enc["stored_shape"]),
                dtype=stored_dtype,
            )
        )
        attributes.setdefault(layout.name, {})[ATTRIBUTE] = enc
    unknown = sorted(set(getattr(spec.store, "encoding", None) or {}) - {a.name for a in prepared.plan.arrays})
    if unknown:
        raise SpecError(
            [
                f"store.encoding: {unknown} are not result arrays of this job; choose from "
                f"{sorted(a.name for a in prepared.plan.arrays if a.dims and a.dims[0] in ('sample', 'case'))}"
            ]
        )
    plan = replace(prepared.plan, arrays=tuple(layouts))
    return replace(prepared, plan=plan, array_attributes=attributes)


def encodings(group) -> dict[str, dict[str, Any]]:
    """The encodings of a store's arrays (read once per worker)."""
    found = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns about our Parquet files and markers while it lists
        names = list(group.array_keys())
    for name in names:
        enc = group[name].attrs.get(ATTRIBUTE)
        if enc:
            found[name] = enc
    return found


def overflow_count(values: np.ndarray, stored: np.ndarray, enc: dict[str, Any] | None) -> int:
    """Finite computed values that the stored dtype made infinite (float16 beyond 65504, bfloat16 near 3.4e38).

    ``values`` is a block as computed, ``stored`` the same block encoded with ``enc``.

    Example:
        >>> enc = {"dtype": "float16"}
        >>> values = np.array([1.0, 7e4, np.inf], np.float32)
        >>> overflow_count(values, encode(values, enc), enc)
        1
    """
    dtype = (enc or {}).get("dtype")
    if dtype not in LOSSY:
        return 0
    # on the bits (integer work: numpy's float16 isinf is several times slower): exponent all ones, mantissa 0
    bits = stored.view(np.uint16)
    infinite = (bits & 0x7FFF) == (0x7F80 if dtype == "bfloat16" else 0x7C00)
    if not infinite.any():
        return 0
    selected = encode(values, {**(enc or {}), "dtype": None})  # the same entries, as computed
    return int(np.count_nonzero(infinite & np.isfinite(selected)))


def dtype_key(spec, name: str) -> str:
    """The job-file key that chose array ``name``'s stored dtype: ``store.encoding.<name>.dtype`` or ``store.dtype``."""
    own = (getattr(spec.store, "encoding", None) or {}).get(name)
    return f"store.encoding.{name}.dtype" if own is not None and own.dtype else "store.dtype"


def encode_arrays(arrays: dict[str, np.ndarray], found: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """A block's arrays in their stored form."""
    return {name: encode(values, found[name]) if name in found else values for name, values in arrays.items()}


def rounding_error(full: np.ndarray, enc: dict[str, Any]) -> dict[str, float]:
    """Max absolute error and max error relative to the array's largest magnitude, of storing ``full``."""
    selected = encode(full, {**enc, "dtype": None})
    stored = uncast(encode(full, enc), enc.get("dtype")).astype(np.float64)
    exact = selected.astype(np.float64)
    finite = np.isfinite(exact)
    diff = np.abs(stored - exact)[finite]
    scale = float(np.max(np.abs(exact[finite]))) if finite.any() else 0.0
    err = float(diff.max()) if diff.size else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(stored - exact)[finite] / np.abs(exact[finite])
        rel = rel[np.isfinite(rel)]
    return {
        "max_abs_error": err,
        "max_error_relative_to_max": err / scale if scale else 0.0,
        "max_elementwise_relative_error": float(np.max(rel)) if rel.size else 0.0,
        "overflow": bool(np.isinf(stored[finite]).any()),
    }


def lossy_arrays(prepared) -> list[str]:
    """The arrays of ``prepared`` stored in a 16-bit dtype (``LOSSY``)."""
    return [
        name for name, attrs in prepared.array_attributes.items() if (attrs.get(ATTRIBUTE) or {}).get("dtype") in LOSSY
    ]


def measure_errors(spec, prepared, arrays: dict[str, np.ndarray], samples: int, where: str | None = None):
    """Record the rounding error of each lossy stored dtype on ``arrays`` (the driver's check) in the attributes.

    ``where`` says in the messages what ``arrays`` holds (default: the first ``samples`` samples).
    """
    from .spec import SpecError

    where = where or f"the first {samples} samples"

    problems = []
    for name, attrs in prepared.array_attributes.items():
        enc = attrs.get(ATTRIBUTE)
        if not enc or enc.get("dtype") not in LOSSY or name not in arrays:
            continue
        error = rounding_error(arrays[name], enc)
        if error["overflow"]:
            problems.append(
                f"{dtype_key(spec, name)}: {enc['dtype']} overflows for {name} (values beyond "
                f"{np.finfo(np.float16).max:.0f} on {where}); use bfloat16 or float32 for it "
                f"(store.encoding.{name}.dtype)"
            )
        elif enc["dtype"] == "float16" and error["max_error_relative_to_max"] > FLOAT16_ROUNDOFF:
            problems.append(
                f"{dtype_key(spec, name)}: float16 underflows for {name} (its largest magnitude on {where} "
                "is below float16's smallest normal number "
                f"{np.finfo(np.float16).smallest_normal:.1e}: stored, it is off by "
                f"{error['max_error_relative_to_max']:.1%} of it instead of at most {FLOAT16_ROUNDOFF:.1e}); "
                f"use bfloat16 or float32 for it (store.encoding.{name}.dtype)"
            )
        enc["rounding_error"] = {**error, "samples": samples}
    if problems:
        raise SpecError(problems)


# ------------------------------------------------------------- codecs


SIXTEEN_BIT_CODEC = {"cname": "zstd", "clevel": 2, "shuffle": "shuffle"}  # + one Blosc block per chunk


def compressors(name: str, level: int | None = None, *, stored_dtype: str | None = None, chunk_bytes: int = 0):
    """Zarr codecs for ``store.compression`` and ``store.compression_level`` of one array.

    ``auto`` (the default) is lz4 for an array of 32- or 64-bit values and,
    for a float16/bfloat16 one (``stored_dtype``), Blosc zstd level 2,
    byte-shuffled (typesize 2), over the whole chunk as one Blosc block
    (``chunk_bytes``): zstd then reaches across the whole chunk (most likely
    to each sample's near-copies: a smooth function of few inputs), which
    lz4's 64 KB window cannot; seed 000's packed float16 Hessian takes 672 B
    per sample instead of lz4's 900 (bench/codecs.py, BENCHMARKS.md).

    >>> compressors("auto", stored_dtype="float16", chunk_bytes=4096 * 300).blocksize
    1228800
    >>> compressors("auto", stored_dtype="float32").to_dict()["configuration"]["cname"]
    'lz4'
    """
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "auto" and stored_dtype in LOSSY:
        return BloscCodec(**SIXTEEN_BIT_CODEC, blocksize=chunk_bytes)  # type: ignore[arg-type]
    if name == "none":
        return None
    if name == "zstd":
        return ZstdCodec(level=3 if level is None else level)
    if name in ("lz4", "auto"):
        return BloscCodec(cname="lz4", clevel=5 if level is None else level, shuffle="shuffle")
    raise ValueError(f"store.compression: unknown codec {name!r}; use auto, lz4, zstd or none")


def create_options(layout, store_settings: dict[str, Any] | None, attributes: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``zarr.create_array`` for one layout: codec, Zarr shards, fill value."""
    settings = store_settings or {}
    stored_dtype = (attributes.get(ATTRIBUTE) or {}).get("dtype")
    chunk_bytes = math.prod(layout.chunks) * np.dtype(layout.dtype).itemsize
    options: dict[str, Any] = {
        "compressors": compressors(
            settings.get("compression", "auto"),
            settings.get("compression_level"),
            stored_dtype=stored_dtype,
            chunk_bytes=chunk_bytes,
        ),
    }
    per_object = settings.get("shards")
    if per_object and per_object > 1 and layout.dims and layout.dims[0] in ("sample", "case"):
        options["shards"] = (layout.chunks[0] * per_object, *layout.chunks[1:])
    if stored_dtype == "bfloat16":
        options["fill_value"] = BF16_NAN
    return options


# ------------------------------------------------------------- reading


def _backend_base():
    from xarray.backends import BackendArray

    return BackendArray


class _DecodedMixin:
    """An xarray lazy backend array: the full quantity computed from its stored form on indexing."""

    def __init__(self, stored, enc: dict[str, Any], n: int):
        self.stored = stored  # an xarray Variable (lazy)
        self.enc = enc
        self.shape = (n, *self._shape())
        self.dtype = np.dtype("float32") if enc.get("dtype") in LOSSY else np.dtype(stored.dtype)

    def _shape(self):
        enc = self.enc
        shape = list(enc["full_shape"] if enc.get("unpack") else enc["stored_shape"])
        if enc.get("outputs") is not None:
            shape[0] = len(enc["outputs"])
        return tuple(shape)

    def __getitem__(self, key):
        from xarray.core import indexing

        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._raw)

    def _raw(self, key: tuple):
        enc = self.enc
        stored_ndim = len(enc["stored_shape"])
        lead = key if not enc.get("unpack") else key[:stored_ndim] + (slice(None),)
        values = uncast(np.asarray(self.stored[lead].values), enc.get("dtype"))
        if not enc.get("unpack"):
            return values
        d, order = enc["full_shape"][-1], len(enc["entries"][0])
        where = {tuple(e): i for i, e in enumerate(enc["entries"])}
        index = np.empty((d,) * order, dtype=np.int64)
        for full in itertools.product(range(d), repeat=order):
            index[full] = where[tuple(sorted(full))]
        keep = values.ndim - 1  # axes left after integer keys on the leading axes
        expanded = values[..., index]
        rest = key[stored_ndim:]
        return expanded[(slice(None),) * keep + tuple(rest)]


def decode(dataset):
    """A Dataset from ``xarray.open_zarr`` of a pipeline store with every encoded array as its full quantity.

    Lazy: nothing is read until values are asked for. Arrays without the
    ``pipeline_encoding`` attribute are left as they are.
    """
    import xarray as xr
    from xarray.core import indexing

    for name in list(dataset.data_vars):
        raw = dataset[name].attrs.get(ATTRIBUTE)
        if not raw:
            continue
        enc = json.loads(raw) if isinstance(raw, str) else raw
        variable = dataset[name].variable
        backend = type("DecodedArray", (_DecodedMixin, _backend_base()), {})(variable, enc, variable.shape[0])
        dims = [variable.dims[0], *(enc["full_dims"] if enc.get("unpack") else enc["stored_dims"])]
        attrs = {k: v for k, v in variable.attrs.items() if k != ATTRIBUTE}
        attrs["stored_as"] = json.dumps(
            {k: enc.get(k) for k in ("dtype", "packed", "entries", "outputs", "rounding_error")}
        )
        coords = {}
        if enc.get("outputs") is not None:
            coords[dims[1]] = (dims[1], np.asarray(enc["outputs"]))
        if enc.get("entries") is not None and not enc.get("unpack"):
            entries = np.asarray(enc["entries"])
            for axis in range(entries.shape[1]):
                coords[f"{name}_i{axis + 1}"] = (f"{name}_entry", entries[:, axis])
        data = xr.Variable(dims, indexing.LazilyIndexedArray(backend), attrs)
        if variable.chunks is not None:  # dask-backed (open_results with dask installed): the same sample chunks
            data = data.chunk({dims[0]: variable.chunks[0]})
        dataset = dataset.drop_vars(name).assign({name: data})
        for coord, (dim, values) in coords.items():
            if dim in dataset.coords and dim not in dataset.dims:
                continue
            dataset = dataset.assign_coords({coord: (dim, values)})
    return dataset


def stored_bytes_per_sample(plan) -> int:
    """Uncompressed bytes per sample of the arrays as stored (the sample-axis ones)."""
    total = 0
    for layout in plan.arrays:
        if layout.shape and layout.dims[0] in ("sample", "case"):
            total += np.dtype(layout.dtype).itemsize * math.prod(layout.shape[1:])
    return total
