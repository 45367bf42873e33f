"""Flow parameters made from the job specs' fields (``freecp.jobs``): one flat parameter per field.

Flat, because Prefect merges a run's parameters into its deployment's by top-level name: with
one parameter per option, ``prefect deployment run segment-images/nightly --param pretrained=none``
changes that option and keeps every other value the deployment sets. Each parameter carries
its field's type, default, help (shown in the UI's run form) and bounds, which Prefect validates
with pydantic before the run starts; the flow body receives the rebuilt, typed spec.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from typing import Annotated, Any

from pydantic import Field

from freecp.flatten import JobField, job_fields, with_job_parameters


def flow_parameter(f: JobField) -> inspect.Parameter:
    """A spec field as a keyword-only flow parameter with its description and bounds."""
    info = Field(description=f.help, ge=f.minimum, le=f.maximum)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                             annotation=Annotated[f.annotation, info])


def with_job_parameters_of(exclude: Collection[str] = (), **specs: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give the decorated flow function every field of each spec as a parameter (apply before
    ``@flow``). The fields' help becomes an ``Args:`` section of the docstring, which Prefect
    shows beside each parameter of the run form."""
    flatten = with_job_parameters(specs, flow_parameter, exclude)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        flat = flatten(fn)
        described = [f"    {f.name}: {f.help}" for spec in specs.values() for f in job_fields(spec, exclude)]
        flat.__doc__ = "\n".join([inspect.cleandoc(fn.__doc__ or ""), "", "Args:", *described])
        return flat

    return decorate
