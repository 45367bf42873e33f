"""Job specs as flat keyword parameters: one declaration, many front ends.

A job spec (``freecp.jobs``) is a frozen dataclass whose fields may themselves be specs. The
commands and the flows both expose every leaf field as one keyword parameter of their own
(``--pretrained`` / ``--param pretrained=none``) and get the rebuilt spec back: this module does
the flattening and the rebuilding; each front end only says how a field becomes its parameter
(a Typer option, a pydantic-annotated flow parameter). It imports nothing beyond the standard
library, so neither Typer nor Prefect is needed to use a spec.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

Spec = TypeVar("Spec")


def option(default: Any, help: str, *, flag: str | None = None, minimum: float | None = None,
           maximum: float | None = None, envvar: str | None = None) -> Any:
    """A spec field: its default, what it means, and how front ends may spell or bound it.

    ``flag`` is the command-line spelling when it is not ``--<name>`` (``--quick-gelu/--no-quick-gelu``);
    ``minimum``/``maximum`` bound numbers in the CLI and in the flow's parameter schema alike;
    ``envvar`` lets the CLI read the value from the environment.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "flag": flag, "minimum": minimum, "maximum": maximum, "envvar": envvar})


@dataclass(frozen=True)
class JobField:
    """One leaf field of a spec, as a front end sees it."""

    name: str
    annotation: Any
    default: Any
    help: str
    flag: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    envvar: str | None = None


def job_fields(spec: type, exclude: Collection[str] = ()) -> list[JobField]:
    """Every leaf field of ``spec``, nested specs flattened in declaration order."""
    hints = get_type_hints(spec)
    found: list[JobField] = []
    for f in dataclasses.fields(spec):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            found += job_fields(kind, exclude)
        elif f.name not in exclude:
            meta = f.metadata
            found.append(JobField(f.name, kind, f.default, meta.get("help", ""), meta.get("flag"),
                                  meta.get("minimum"), meta.get("maximum"), meta.get("envvar")))
    return found


def build_job(spec: type[Spec], values: Mapping[str, Any]) -> Spec:
    """The spec from flat values (absent names keep their defaults); nested specs are rebuilt too."""
    hints = get_type_hints(spec)
    given: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            given[f.name] = build_job(kind, values)
        elif f.name in values:
            given[f.name] = values[f.name]
    return spec(**given)


def flat_values(job: Any) -> dict[str, Any]:
    """The inverse of ``build_job``: every leaf field of ``job`` by name."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(job):
        value = getattr(job, f.name)
        values.update(flat_values(value) if dataclasses.is_dataclass(value) else {f.name: value})
    return values


def with_job_parameters(specs: Mapping[str, type], parameter: Callable[[JobField], inspect.Parameter],
                        exclude: Collection[str] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate ``fn(..., name=<spec>)``: the result takes every leaf field of each spec as a
    keyword parameter (made by ``parameter``) instead of ``name``, and calls ``fn`` with the specs.

    The combined signature is set as ``__signature__`` (Typer and Prefect read it); ``fn``'s own
    parameters come first. Field names must be unique across the specs and ``fn``'s parameters.
    """
    flat = {name: job_fields(spec, exclude) for name, spec in specs.items()}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        declared = inspect.signature(fn, eval_str=True)
        own = [p for name, p in declared.parameters.items() if name not in specs]
        generated = [parameter(f) for fields in flat.values() for f in fields]
        names = [p.name for p in own + generated]
        if len(names) != len(set(names)):
            raise TypeError(f"{fn.__name__}: parameter names repeat: {sorted(n for n in names if names.count(n) > 1)}")

        def with_jobs(*args: Any, **values: Any) -> Any:
            jobs = {name: build_job(specs[name], {f.name: values.pop(f.name) for f in fields if f.name in values})
                    for name, fields in flat.items()}
            return fn(*args, **values, **jobs)

        return signed(with_jobs, fn, inspect.Signature(own + generated, return_annotation=declared.return_annotation))

    return decorate


def signed(wrapper: Callable[..., Any], fn: Callable[..., Any], signature: inspect.Signature) -> Callable[..., Any]:
    """``wrapper`` named and documented as ``fn``, with ``signature`` (what Typer and Prefect read)."""
    for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(wrapper, attribute, getattr(fn, attribute))
    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()
                               if p.annotation is not inspect.Parameter.empty}
    return wrapper
