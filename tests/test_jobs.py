"""One job spec per entry point: every ``freecp`` option has its flow parameter, with the same
default, and back. Both sides are read from the real things (the Typer commands' click
parameters, the flows' Prefect parameter schemas), not from the specs, so a parameter written
by hand on one side only, or a default that drifted, fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner
from prefect.utilities.callables import parameter_schema

from freecp.cli import app
from freecp.flatten import build_job, flat_values
from freecp.flows.segment import segment_images
from freecp.flows.vocabulary import build_vocabulary, describe_vocabulary, encode_vocabulary
from freecp.jobs import DescribeJob, FolderJob
from freecp.settings import (AP_TEXTS, BOX_RULES, FLOAT_ORDERS, PRECISIONS, PROTOCOLS, SC_FORMULAS, SCOPES,
                             VARIANTS)

# What exists on one side only, and why.
FLOW_ONLY = {"threads", "dask_address"}   # how a flow run fans out (thread pool or Dask cluster)
CLI_ONLY = {
    "progress",  # a progress bar: the flows log instead
    "workers",   # model calls at once in one folder run: a flow's `threads` (or Dask workers) do that
    # describe's other modes (show, review, offline batches, maintenance) are commands, not jobs
    "show", "export_batch_to", "import_batch_from", "export_json", "import_json", "compact",
    "backbone",  # --variant's old name, kept for one release (hidden)
}


def _cli(name: str) -> dict[str, object]:
    """The command's parameters by name, with their defaults (required ones as ``...``)."""
    command = typer.main.get_command(app).commands[name]
    return {p.name: (... if p.required else _plain(p.default)) for p in command.params if p.name not in CLI_ONLY}


def _flow(flow) -> dict[str, object]:
    schema = parameter_schema(flow)
    return {name: (... if name in schema.required else spec.get("default"))
            for name, spec in schema.properties.items() if name not in FLOW_ONLY}


def _plain(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


@pytest.mark.parametrize(("command", "flow"), [
    ("segment", segment_images), ("encode", encode_vocabulary), ("describe", describe_vocabulary),
])
def test_every_cli_option_is_a_flow_parameter_with_the_same_default_and_back(command: str, flow) -> None:
    cli, flow_parameters = _cli(command), _flow(flow)
    assert set(cli) == set(flow_parameters)
    differing = {name: (cli[name], flow_parameters[name]) for name in cli
                 if cli[name] is not ... and flow_parameters[name] is not ... and cli[name] != flow_parameters[name]}
    assert not differing
    if command == "segment":  # the options the flow once dropped are there
        assert {"quick_gelu", "box_rule", "batch_images", "prefetch", "float_order"} <= set(flow_parameters)
    if command == "encode":  # the text tower's path decides the vectors, so encode has the switch too
        assert flow_parameters["float_order"] == cli["float_order"] == "fast"


def test_build_vocabulary_takes_describe_and_encode_parameters_but_its_own_descriptions() -> None:
    both = (_flow(describe_vocabulary).keys() | _flow(encode_vocabulary).keys()) - {"descriptions"}
    assert set(_flow(build_vocabulary)) == both


def test_a_job_round_trips_through_its_flat_parameters() -> None:
    job = build_job(FolderJob, {"pretrained": "none", "rp_threshold": 0.3, "follow_symlinks": True})
    assert (job.segment.clip.pretrained, job.segment.overrides.rp_threshold, job.follow_symlinks) == ("none", 0.3, True)
    assert build_job(FolderJob, flat_values(job)) == job
    assert build_job(DescribeJob, {}) == DescribeJob()


def test_a_flow_validates_its_parameters_against_the_spec_bounds() -> None:
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError):
        describe_vocabulary.validate_parameters({"vocab": "voc21", "per_class": 0})
    assert segment_images.validate_parameters(
        {"images": "in", "vocab": "voc21", "out": "out", "batch_images": "4"})["batch_images"] == 4


def test_the_offline_hint_names_real_flow_parameters() -> None:
    import re

    from freecp.clip.errors import PREFECT_PARAMETER_NAMES

    named = {re.fullmatch(r"--param (\w+)=\S+", hint).group(1) for hint in PREFECT_PARAMETER_NAMES.values()}
    for flow in (segment_images, encode_vocabulary, build_vocabulary):
        assert named <= set(parameter_schema(flow).properties)


# Every job field with a fixed set of values, and where those values are written (freecp.settings).
CHOICES = {"variant": VARIANTS, "protocol": PROTOCOLS, "scope": SCOPES, "sc_formula": SC_FORMULAS,
           "box_rule": BOX_RULES, "precision": PRECISIONS, "float_order": FLOAT_ORDERS, "ap_texts": AP_TEXTS}


def _enum(spec: dict) -> list | None:
    """The allowed values of a schema property (a nullable one's are under ``anyOf``)."""
    return next((part["enum"] for part in [spec, *spec.get("anyOf", [])] if "enum" in part), None)


@pytest.mark.parametrize("flow", [segment_images, encode_vocabulary, build_vocabulary])
def test_the_run_form_offers_each_choice_as_an_enum_of_the_allowed_values(flow) -> None:
    offered = {name: _enum(spec) for name, spec in parameter_schema(flow).properties.items() if name in CHOICES}
    assert offered, "the flow has no choice parameter"
    assert offered == {name: list(CHOICES[name]) for name in offered}
    if flow is segment_images:
        assert set(offered) == set(CHOICES)


def test_the_cli_help_lists_each_choice_and_hides_the_old_variant_option() -> None:
    shown = CliRunner().invoke(app, ["segment", "--help"], env={"COLUMNS": "200"}, terminal_width=200).output
    for name, values in CHOICES.items():
        assert f"--{name.replace('_', '-')}" in shown and f"<{'|'.join(values)}>" in shown, name
    assert "--backbone" not in shown
