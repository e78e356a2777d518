"""The job spec: pydantic models of job files, and loading them.

One concept per module, imports one way (``base`` <- ``derivative``,
``sweep`` <- ``loading``):

- ``base``: ``Strict``, ``SpecError``, the store and execution settings, ``Job``
  (the fields and rules every kind shares: schema version, name, shard size,
  ``resolved``, ``spec_hash``).
- ``derivative``: ``DerivativeJob`` (function, inputs, quantities).
- ``sweep``: ``SweepJob`` (solver, sweep, fixed, profiles, sensitivities).
- ``loading``: YAML, ``--set`` overrides, error messages, path resolution,
  JSON schema, hash and diff; the model of each ``kind`` comes from
  ``pipeline.kinds``.

Example:
    >>> spec = load_spec("jobs/quickstart.yaml", overrides=["inputs.n=1000"])
    >>> type(spec).__name__, spec.inputs.n
    ('DerivativeJob', 1000)
"""

from .base import (
    MAX_SAMPLES,
    SCHEMA_VERSION,
    ArrayEncoding,
    ExecutionSettings,
    Job,
    SpecError,
    StoreSettings,
    Strict,
    check_store_layout,
    drop_redacted_storage_options,
    redact_storage_options,
)
from .derivative import (
    DerivativeJob,
    DerivativeSettings,
    Function,
    GridAxis,
    GridInputs,
    ImportFunction,
    Inputs,
    MLPFunction,
    NormalInputs,
    NpyInputs,
    ParquetInputs,
    SobolInputs,
    UniformInputs,
    ZarrInputs,
)
from .loading import (
    apply_overrides,
    job_models,
    json_schema,
    load_spec,
    parse_override,
    read_yaml,
    results_hash,
    results_view,
    spec_differences,
    validate_spec,
)
from .sweep import SweepJob

__all__ = [
    "MAX_SAMPLES",
    "SCHEMA_VERSION",
    "ArrayEncoding",
    "DerivativeJob",
    "DerivativeSettings",
    "ExecutionSettings",
    "Function",
    "GridAxis",
    "GridInputs",
    "ImportFunction",
    "Inputs",
    "Job",
    "MLPFunction",
    "NormalInputs",
    "NpyInputs",
    "ParquetInputs",
    "SobolInputs",
    "SpecError",
    "StoreSettings",
    "Strict",
    "SweepJob",
    "UniformInputs",
    "ZarrInputs",
    "apply_overrides",
    "check_store_layout",
    "drop_redacted_storage_options",
    "job_models",
    "json_schema",
    "load_spec",
    "parse_override",
    "read_yaml",
    "redact_storage_options",
    "results_hash",
    "results_view",
    "spec_differences",
    "validate_spec",
]
