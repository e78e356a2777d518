"""Every Python block and every job file shown in README.md and docs/*.md runs as copied.

Blocks run one by one, each in a fresh namespace (as a reader copies one), in
a scratch directory where the stores they read (``results/<name>.zarr``) were
made first by the jobs in ``STORES``. A block whose first line is a comment
naming a ``.py`` file (``# mypkg/oscillator.py``) is written to that file
instead, for the blocks after it to import. A block of ``>>>`` lines runs as
a doctest.

Markers: HTML comments on the lines just above a block's fence (invisible on
GitHub), several allowed:

- ``<!-- doc-test: skip (why) -->``: not run (signatures, a cluster, a bucket);
  the reason is reported;
- ``<!-- doc-test: replace OLD -> NEW -->``: a text substitution before the
  run (smaller sizes);
- ``<!-- doc-test: set KEY=VALUE set KEY=VALUE -->``: ``--set`` overrides
  for a job file block (smaller sizes);
- ``<!-- doc-test: needs results/a.zarr results/b.zarr -->``: stores the block
  reads without naming them (a glob), made first.
"""

from __future__ import annotations

import doctest
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
MARKER = re.compile(r"<!--\s*doc-test:\s*(.*?)\s*-->")

# the stores the docs read, and the (smaller where the block allows it) jobs that make them
STORES = {
    "results/grid.zarr": ("jobs/grid.yaml", []),  # full size: the README reshapes it to 100 x 50
    "results/quickstart.zarr": ("jobs/quickstart.yaml", ["inputs.n=4096"]),
    "results/sweep.zarr": (
        "jobs/sweep.yaml",
        [
            "sweep.axes.T0_mean.num=3",
            "sweep.axes.sigma_mean.num=2",
            "solver.options.t_end=0.1",
            "solver.options.save_every=20",
        ],
    ),
}


@dataclass
class Block:
    where: str
    lang: str
    code: str
    skip: str | None = None
    sets: list[str] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)


def doc_blocks() -> list[Block]:
    blocks = []
    for file in DOCS:
        text = file.read_text()
        for match in FENCE.finditer(text):
            lang, code = match.group(1), match.group(2)
            line = text[: match.start()].count("\n") + 1
            block = Block(f"{file.relative_to(ROOT)}:{line}", lang, code)
            above = text[: match.start()].rstrip("\n").splitlines()
            while above and MARKER.fullmatch(above[-1].strip()):
                directive = MARKER.fullmatch(above.pop().strip()).group(1)
                if directive.startswith("skip"):
                    block.skip = directive[4:].strip(" ()") or "marked skip"
                elif directive.startswith("replace "):
                    old, new = directive[len("replace ") :].split(" -> ")
                    assert old in block.code, f"{block.where}: the marker replaces {old!r}, not in the block"
                    block.code = block.code.replace(old, new)
                elif directive.startswith("needs "):
                    block.needs += directive[len("needs ") :].split()
                elif directive.startswith("set "):
                    block.sets += [s for s in directive.split("set ") if s.strip() and s.strip()]
                    block.sets = [s.strip() for s in block.sets]
                else:
                    raise AssertionError(f"{block.where}: unknown doc-test marker {directive!r}")
            blocks.append(block)
    return blocks


BLOCKS = doc_blocks()
PYTHON = [b for b in BLOCKS if b.lang == "python"]
JOBS = [
    b
    for b in BLOCKS
    if b.lang == "yaml" and isinstance(yaml.safe_load(b.code), dict) and "schema_version" in yaml.safe_load(b.code)
]
FILES = [b for b in PYTHON if re.match(r"#\s*[\w./-]+\.py\s*$", b.code.splitlines()[0])]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A directory like a checkout the reader works in: the files the docs define, stores made on demand."""
    folder = tmp_path_factory.mktemp("docs")
    for block in FILES:
        target = folder / block.code.splitlines()[0].lstrip("#").strip()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.code)
    return folder


@pytest.fixture
def in_scratch(scratch, monkeypatch):
    monkeypatch.chdir(scratch)
    monkeypatch.syspath_prepend(str(scratch))
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        monkeypatch.delitem(sys.modules, name)
    return scratch


def ensure_store(scratch: Path, store: str, where: str) -> None:
    from pipeline.driver import submit
    from pipeline.runner import InlineExecutor
    from pipeline.spec import load_spec

    if (scratch / store / "zarr.json").is_file():
        return
    if store not in STORES:
        pytest.fail(
            f"{where} reads {store}: add the job that makes it to STORES in tests/test_docs_run.py, "
            "or mark the block <!-- doc-test: skip (why) -->"
        )
    job, overrides = STORES[store]
    spec = load_spec(ROOT / job, [*overrides, f"store.path={scratch / store}"])
    assert submit(spec, InlineExecutor()).complete


@pytest.mark.parametrize("block", PYTHON, ids=[b.where for b in PYTHON])
def test_python_block_runs_as_copied(block, in_scratch):
    if block.skip:
        pytest.skip(f"{block.where}: {block.skip}")
    if block in FILES:
        return  # written into the scratch directory, imported by the blocks after it
    for store in sorted(set(re.findall(r"results/[\w.-]+\.zarr", block.code)) | set(block.needs)):
        ensure_store(in_scratch, store, block.where)
    if block.code.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(block.code, {}, block.where, block.where, 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test)
        assert runner.failures == 0 and runner.tries > 0
        return
    exec(compile(block.code, block.where, "exec"), {"__name__": "__doc_block__"})


@pytest.mark.parametrize("block", JOBS, ids=[b.where for b in JOBS])
def test_job_file_block_runs(block, in_scratch, tmp_path):
    """A job file shown in the docs, saved as a file and submitted (sizes reduced by its `set` marker)."""
    from pipeline.driver import submit
    from pipeline.runner import InlineExecutor
    from pipeline.spec import load_spec
    from pipeline.store import open_results

    if block.skip:
        pytest.skip(f"{block.where}: {block.skip}")
    job = tmp_path / "job.yaml"
    job.write_text(block.code)
    spec = load_spec(job, [*block.sets, f"store.path={tmp_path / 'store.zarr'}"])
    assert submit(spec, InlineExecutor()).complete
    dataset = open_results(spec.store.path, require_complete=True)
    assert not any(bool(dataset[name].isnull().any()) for name in dataset.data_vars)


def test_every_python_block_is_run_or_marked():
    assert len(PYTHON) >= 10 and len(JOBS) >= 2
    assert os.path.exists(ROOT / "jobs/grid.yaml")
