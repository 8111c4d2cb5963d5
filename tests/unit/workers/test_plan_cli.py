"""``nuri plan`` through typer's runner on a local app that registers the command."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from controlplane.cli.plan import plan

app = typer.Typer()
app.command()(plan)
runner = CliRunner()


def test_table_output_names_gpus_and_zero_stage() -> None:
    result = runner.invoke(app, ["--model", "axk1", "--kind", "finetune"])
    assert result.exit_code == 0, result.output
    assert "ZeRO stage" in result.output and "72 on 9 node(s)" in result.output


def test_json_output_is_the_plan() -> None:
    args = ["--model", "axk1", "--kind", "inference", "--precision", "fp8", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    body = json.loads(result.output)
    assert body["nodes"] == 1 and body["precision"] == "fp8"


def test_pool_shape_options_change_the_plan() -> None:
    args = ["--kind", "inference", "--precision", "fp8", "--json"]
    h100 = json.loads(runner.invoke(app, [*args, "--gpu-memory-gib", "80"]).output)
    small = json.loads(runner.invoke(app, [*args, "--gpu-memory-gib", "48"]).output)
    assert small["gpus"] > h100["gpus"]
    four = json.loads(runner.invoke(app, [*args, "--gpus-per-node", "4"]).output)
    assert four["pool"]["gpus_per_node"] == 4


def test_bad_input_exits_2_with_a_message() -> None:
    for args in (
        ["--kind", "bogus"],
        ["--precision", "int3"],
        ["--model", "/nonexistent/model"],
        ["--seq-len", "0"],
        ["--gpu-memory-gib", "-1"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        assert "cannot plan" in result.output
