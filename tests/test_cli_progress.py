"""Long reads of a store on a terminal: what they show while they run, and Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "inputs.n=512", "--set", "store.chunk_size=128", "--set", "execution.shard_size=256"]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("progress")
    store = str(folder / "quickstart.zarr")
    ran = CliRunner().invoke(
        main,
        [
            "submit",
            str(ROOT / "jobs/quickstart.yaml"),
            "--executor",
            "inline",
            "-q",
            *SMALL,
            "--set",
            f"store.path={store}",
        ],
    )
    assert ran.exit_code == 0, ran.output
    return store


@pytest.mark.parametrize(
    "command, target",
    [
        (["inspect"], "pipeline.report.inspect_store"),
        (["status"], "pipeline.live.store_status"),
        (["verify"], "pipeline.verify.verify_store"),
        (["report", "-o", "{folder}/x.html"], "pipeline.html_report.build_report"),
    ],
)
def test_ctrl_c_in_a_command_that_reads_is_one_line_and_exit_130(small_store, monkeypatch, command, target):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(f"{module}.{name}", interrupted)
    folder = str(Path(small_store).parent)
    result = CliRunner().invoke(main, [command[0], small_store, *(c.format(folder=folder) for c in command[1:])])
    assert result.exit_code == 130, result.output
    assert result.output.strip() == "interrupted"  # no "Aborted!", no traceback
