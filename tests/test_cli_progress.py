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


def test_report_tells_which_range_it_reads(small_store, tmp_path, monkeypatch):
    from pipeline import html_report

    monkeypatch.setattr(html_report, "RANGE_BYTES", 1)  # one chunk of 128 samples per range: 4 ranges per quantity
    said: list[str] = []
    html_report.write_report(small_store, tmp_path / "x.html", progress=said.append)
    for quantity in ("value", "jacobian", "hessian", "laplacian"):
        assert [line for line in said if line.startswith(f"reading {quantity}:")] == [
            f"reading {quantity}: range {i} of 4" for i in (1, 2, 3, 4)
        ]


def test_report_shows_the_range_on_a_terminal_only(small_store, tmp_path, monkeypatch):
    import io
    import time

    from rich.console import Console

    from pipeline import cli, html_report

    monkeypatch.setattr(html_report, "RANGE_BYTES", 1)
    plain = CliRunner().invoke(main, ["report", small_store, "-o", str(tmp_path / "plain.html")])
    assert plain.exit_code == 0, plain.output
    assert plain.output == f"wrote {tmp_path / 'plain.html'}\n"  # a pipe or a log: no spinner, no counts
    screen = io.StringIO()
    monkeypatch.setattr(cli, "_console", lambda: Console(file=screen, force_terminal=True, width=200))
    write_report = html_report.write_report

    def slowly(store, out, progress):  # each range as long as a refresh of the spinner (1/12.5 s)
        return write_report(store, out, progress=lambda text: (progress(text), time.sleep(0.1)))

    monkeypatch.setattr(html_report, "write_report", slowly)
    shown = CliRunner().invoke(main, ["report", small_store, "-o", str(tmp_path / "terminal.html")])
    assert shown.exit_code == 0, shown.output
    assert "reading hessian: range 3 of 4" in screen.getvalue()
