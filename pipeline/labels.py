"""Labels of a store's axes: what ``open_results`` adds to the raw Zarr arrays.

Driver side, ``check_labels`` refuses ``function.output_names`` /
``function.input_names`` that do not fit the job (before any store exists).
Reader side, ``label_dataset`` turns the arrays of a store into a labelled
``xarray.Dataset``: a ``sample`` (or ``case``) index coordinate, the inputs
as coordinates of ``sample``, and the names from the job file as labels of
the ``output`` and ``input`` axes, and of the outputs and entries a
quantity keeps under ``store.encoding`` (``label_selections``). ``unstack_grid`` turns the flat sample
axis of a grid job into the grid's own axes.

Example:
    >>> check_labels({"output_names": ["u", "v"]}, ["value"], in_shape=(2,), out_shape=(3,))
    Traceback (most recent call last):
    ...
    ValueError: function.output_names: 2 names for 3 outputs; give one name per output (or drop the key)
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED = ("sample", "case", "inputs", "output", "input")


def check_labels(function: dict[str, Any], quantities, *, in_shape, out_shape) -> None:
    """Raise ``ValueError`` (naming the key, the value and the fix) when the axis names do not fit the job."""
    for key, shape, what in (("output_names", out_shape, "outputs"), ("input_names", in_shape, "inputs")):
        names = function.get(key)
        if names is None:
            continue
        if len(shape) != 1:
            raise ValueError(
                f"function.{key}: names label a 1-D axis, but the {what} have shape {list(shape)}; drop the key"
            )
        if len(names) != shape[0]:
            raise ValueError(
                f"function.{key}: {len(names)} names for {shape[0]} {what}; give one name per "
                f"{what[:-1]} (or drop the key)"
            )
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"function.{key}: {twice} appear more than once; the names must differ")
        if key == "input_names":  # each also becomes a coordinate of 'sample': a Python identifier, no clash
            taken = set(RESERVED) | set(quantities)
            # nor the coordinates of the outputs and entries store.encoding keeps (label_selections)
            selections = re.compile(rf"^({'|'.join(map(re.escape, quantities))})_(output|entry|i\d+)(_index)?$")
            bad = [
                n
                for n in names
                if not _NAME.match(n) or n in taken or n.startswith("input_") or (quantities and selections.match(n))
            ]
            if bad:
                raise ValueError(
                    f"function.input_names: {bad} cannot name coordinates (letters, digits and _, "
                    f"not one of {sorted(taken)}, nor <quantity>_output, <quantity>_entry, <quantity>_i1, ...); "
                    "rename them"
                )


def label_dataset(dataset, attributes: dict[str, Any]):
    """The store's dataset with index coordinates, inputs as coordinates and the job's axis labels (per kind)."""
    from .kinds import kind_of_store

    return kind_of_store(attributes).label_dataset(dataset, attributes)


def label_cases(dataset, attributes: dict[str, Any]):
    """A sweep store's dataset: the ``case`` index, the case parameters in memory."""
    if "case" in dataset.dims:
        dataset = dataset.assign_coords(case=np.arange(dataset.sizes["case"]))
        # the case parameters are small (8 bytes a case): in memory, so that `where(ds.T0_phase == 0, drop=True)`
        # and `set_index(case=[...])` work on a lazy dataset
        small = [name for name, coord in dataset.coords.items() if coord.dims == ("case",) and name != "case"]
        dataset = dataset.assign_coords({name: dataset[name].variable.load() for name in small})
    return dataset


def label_samples(dataset, attributes: dict[str, Any]):
    """A derivative store's dataset: the ``sample`` index, inputs as coordinates, the function's axis names."""
    spec = attributes.get("spec") or {}
    if "sample" in dataset.dims:
        dataset = dataset.assign_coords(sample=np.arange(dataset.sizes["sample"]))
    if "inputs" in dataset.data_vars:
        dataset = dataset.set_coords("inputs")
    function = spec.get("function") or {}
    output_names = function.get("output_names")
    if output_names and "output" in dataset.dims and dataset.sizes["output"] == len(output_names):
        dataset = dataset.assign_coords(output=list(output_names))
    input_names = function.get("input_names")
    if input_names and "input" in dataset.dims and dataset.sizes["input"] == len(input_names):
        input_dims = [d for d in dataset.dims if d == "input" or re.fullmatch(r"input_d\d+", str(d))]
        dataset = dataset.assign_coords({dim: list(input_names) for dim in input_dims})
        if "inputs" in dataset.coords:
            dataset = dataset.assign_coords(
                {name: dataset["inputs"].variable.isel(input=i) for i, name in enumerate(input_names)}
            )
    return label_selections(dataset, output_names, input_names)


def label_selections(dataset, output_names, input_names):
    """The axes of chosen outputs and entries (``store.encoding``) labelled with the function's names.

    ``<name>_output`` (the outputs a quantity kept) gets their names, its
    integer indices staying as ``<name>_output_index``; the entry coordinates
    ``<name>_i1``, ``<name>_i2``, ... on ``<name>_entry`` get the input names
    and become one index (a MultiIndex from two on), so that
    ``ds.hessian.sel(hessian_i1="x", hessian_i2="y")`` picks an entry; their
    integers stay as ``<name>_i1_index``, ... Without names nothing changes.
    """
    for name in list(dataset.data_vars):
        dims = dataset[name].dims
        kept = f"{name}_output"
        if output_names and kept in dims and kept in dataset.coords and dataset[kept].dtype.kind in "iu":
            indices = dataset[kept].values
            if indices.size and indices.max() < len(output_names):
                dataset = dataset.assign_coords(
                    {kept: [str(output_names[i]) for i in indices], f"{kept}_index": (kept, indices)}
                )
        entry = f"{name}_entry"
        axes = list(itertools.takewhile(dataset.coords.__contains__, (f"{name}_i{k}" for k in itertools.count(1))))
        if not input_names or entry not in dims or not axes:
            continue
        columns = {axis: dataset[axis].values for axis in axes}
        if any(values.dtype.kind not in "iu" or values.max() >= len(input_names) for values in columns.values()):
            continue
        dataset = dataset.assign_coords(
            {f"{axis}_index": (entry, values) for axis, values in columns.items()}
            | {axis: (entry, [str(input_names[i]) for i in values]) for axis, values in columns.items()}
        )
        dataset = dataset.set_xindex(axes)
    return dataset


def grid_axes(attributes: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The points of each axis of a grid job, by coordinate name (``function.input_names`` or x0, x1, ...); None otherwise."""
    spec = attributes.get("spec") or {}
    inputs = spec.get("inputs") or {}
    if inputs.get("kind") != "grid":
        return None
    names = (spec.get("function") or {}).get("input_names") or [f"x{i}" for i in range(len(inputs["axes"]))]
    return {name: np.linspace(axis["low"], axis["high"], axis["num"]) for name, axis in zip(names, inputs["axes"])}


def unstack_grid(dataset):
    """A grid job's dataset with its flat ``sample`` axis unstacked into the grid's axes.

    The points come in C order (the last axis fastest), so ``sample`` becomes
    one dimension per grid axis, named by ``function.input_names`` (or ``x0``,
    ``x1``, ...), with the axis' points as its coordinate.

    Example:
        >>> grid = unstack_grid(pipeline.open_results("results/grid.zarr"))   # doctest: +SKIP
        >>> grid.value.sel(output="u").plot()                                # doctest: +SKIP
    """
    import pandas as pd
    import xarray as xr

    axes = grid_axes(dataset.attrs)
    if axes is None and "case" in dataset.dims:
        swept = list(dataset.attrs.get("swept") or [])
        raise ValueError(
            "unstack_grid unstacks a derivative job's grid of inputs; this is a sweep store, whose cases unstack "
            f"by their swept parameters: ds.set_index(case={swept!r}).unstack('case')"
        )
    if axes is None:
        raise ValueError(
            "unstack_grid: the store's inputs are not a grid (inputs.kind is "
            f"{(dataset.attrs.get('spec') or {}).get('inputs', {}).get('kind')!r}); only a grid job unstacks"
        )
    flat = dataset.drop_vars([name for name in [*axes, "sample"] if name in dataset.coords])
    index = pd.MultiIndex.from_product(list(axes.values()), names=list(axes))
    flat = flat.assign_coords(xr.Coordinates.from_pandas_multiindex(index, "sample"))
    return flat.unstack("sample")
