"""``freecp describe`` (class descriptions from an LLM, cached) and ``freecp llm serve``."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from freecp.commands import exits, stopping
from freecp.commands.options import with_jobs
from freecp.commands.progress import library_log_lines, progress_bars
from freecp.commands.text import shown
from freecp.defaults import DEFAULT_VLLM_MODEL, SMOLLM2_NAME
from freecp.jobs import DescribeJob

if TYPE_CHECKING:
    from freecp.describe.run import DescribeSummary
    from freecp.stores.descriptions import DescriptionCache
    from freecp.vocab import Vocabulary

# The library (pyarrow, the LLM client) is imported inside the commands, so `--help` and a
# mistyped option answer at once.
out = Console(soft_wrap=True)  # user text (names, paths) is printed as is
err = Console(stderr=True, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``describe`` and the ``llm`` group (``llm serve``)."""
    app.command(name="describe")(describe)
    llm = typer.Typer(help="Run an LLM server for the describe step.", no_args_is_help=True)
    llm.command(name="serve")(serve)
    app.add_typer(llm, name="llm")


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """One clear message and a non-zero exit for anything the user can fix; SIGTERM acts like Ctrl-C
    so a local server started for the command is stopped, not orphaned."""
    from freecp.describe.batch import BatchFormatError
    from freecp.describe.client import LLMError
    from freecp.describe.convert import ConversionError
    from freecp.describe.prompts import PromptError
    from freecp.stores.fs import StoreError, StoreUnusableError
    from freecp.vocab import VocabularyError

    user_errors = (VocabularyError, LLMError, StoreError, BatchFormatError, PromptError, ConversionError, ValueError)
    previous = signal.signal(signal.SIGTERM, stopping.raise_terminated)
    try:
        yield
    except StoreUnusableError as error:
        err.print(f"[red]error:[/] {shown(str(error))}", highlight=False)
        raise typer.Exit(exits.STORAGE) from None
    except user_errors as error:
        err.print(f"[red]error:[/] {shown(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as stop:
        err.print(f"{stopping.stopped(stop)}: everything received so far is saved")
        raise typer.Exit(stopping.exit_code(stop)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


@with_jobs(job=DescribeJob)
def describe(
    vocab: Annotated[str | None, typer.Argument(help="Vocabulary: a shipped name (voc21) or a file.")] = None,
    show: Annotated[str | None, typer.Option(help="Print the cached descriptions of this class.")] = None,
    export_batch_to: Annotated[Path | None, typer.Option(
        "--export-batch", help="Write the missing requests as a `vllm run-batch` input file.")] = None,
    import_batch_from: Annotated[Path | None, typer.Option(
        "--import-batch", help="Store the answers of a `vllm run-batch` output file.")] = None,
    export_json: Annotated[Path | None, typer.Option(
        help=escape("Write {class: [descriptions]} (of VOCAB, or of all classes) to this file."))] = None,
    import_json: Annotated[Path | None, typer.Option(
        help=escape("Read reviewed {class: [descriptions]} from this file; they replace the generated ones."))] = None,
    compact: Annotated[bool, typer.Option(help="Merge the cache's shards into one.")] = False,
    *,
    job: DescribeJob,
) -> None:
    """Write visual descriptions of every class with an LLM, sending only what the cache lacks."""
    modes = {"--show": show, "--export-batch": export_batch_to, "--import-batch": import_batch_from,
             "--export-json": export_json, "--import-json": import_json, "--compact": compact}
    chosen = [flag for flag, value in modes.items() if value]
    if len(chosen) > 1:
        err.print(f"[red]error:[/] {' and '.join(chosen)} cannot be combined")
        raise typer.Exit(2)
    from freecp.describe.run import describe as describe_job
    from freecp.stores.descriptions import DescriptionCache
    from freecp.vocab import load_vocabulary

    llm_model = job.llm.llm_model  # None: every model's descriptions (--show, --export-json)
    with _user_errors():
        store = DescriptionCache(job.cache)
        if show:
            _show(store, show, llm_model)
        elif compact:
            merged, kept = store.compact()
            out.print(f"compacted {merged} shards into one holding {kept} entries")
        elif import_json:
            out.print(f"imported reviewed descriptions of {store.import_json(import_json)} classes from {import_json}")
        elif export_json:
            count = store.export_json(export_json, load_vocabulary(vocab) if vocab else None, llm_model)
            out.print(f"wrote descriptions of {count} classes to {export_json}")
        else:
            if not vocab:
                raise ValueError(f"{chosen[0] if chosen else 'describe'} needs a VOCAB argument")
            vocabulary, model = load_vocabulary(vocab), job.llm.model
            if export_batch_to:
                _export_batch(vocabulary, export_batch_to, store, model, job.llm.structured is not False,
                              job.plan_options())
            elif import_batch_from:
                _import_batch(vocabulary, import_batch_from, store, model, job.plan_options())
            else:
                with progress_bars() as on_progress, library_log_lines("freecp.describe", err):
                    summary = describe_job(vocabulary, job, on_progress, cache=store)
                _print_summary(summary, job.per_class)
                if not summary.ok:
                    raise typer.Exit(1)


def _export_batch(vocabulary: Vocabulary, path: Path, store: DescriptionCache, model: str, structured: bool,
                  plan_options: dict) -> None:
    from freecp.describe.batch import export_batch

    count = export_batch(vocabulary, path, cache=store, llm_model=model, structured=structured, **plan_options)
    out.print(f"wrote {count} requests to {path}" + ("" if count else " (the cache already holds everything)"))


def _import_batch(vocabulary: Vocabulary, path: Path, store: DescriptionCache, model: str, plan_options: dict) -> None:
    from freecp.describe.batch import import_batch

    result = import_batch(vocabulary, path, cache=store, llm_model=model, **plan_options)
    out.print(f"imported {result.imported} answers ({result.already_cached} already cached, "
              f"{result.unmatched} not from this vocabulary and settings, {len(result.failed)} failed)")
    for reason in result.failed.values():
        err.print(f"  {reason}", markup=False, highlight=False)
    if result.failed:
        raise typer.Exit(1)


def _show(store: DescriptionCache, name: str, llm_model: str | None) -> None:
    known = store.descriptions_by_class(llm_model)
    if name not in known:
        close = [k for k in known if k.casefold() == name.casefold() or name.casefold() in k.casefold()]
        hint = f" (did you mean: {', '.join(close[:5])}?)" if close else ""
        raise ValueError(f"the cache at {store.url} holds no descriptions for {name!r}{hint}")
    answers = [e for e in store.entries() if e.class_name == name]
    models = sorted({e.llm_model or e.source for e in answers})
    out.print(f"{shown(name)}: {len(known[name])} descriptions from {len(answers)} entries ({', '.join(models)})")
    for number, text in enumerate(known[name], start=1):
        out.print(f"{number:3d}. {shown(text)}")


def _print_summary(summary: DescribeSummary, per_class: int) -> None:
    out.print(f"classes done: {summary.classes_done}/{summary.classes_total}   requests sent: "
              f"{summary.requests_sent}   cache hits: {summary.cache_hits}   cache: {summary.cache}", markup=False)
    asked = f"{summary.engine} at {summary.server}" if summary.server else "no server (the cache had every answer)"
    out.print(f"model: {summary.llm_model}   server: {asked}", markup=False)
    if summary.short:
        out.print(f"{len(summary.short)} classes have fewer than {per_class} descriptions "
                  "(purification falls back to the class name only for a class with none):")
        for name, (count, reason) in sorted(summary.short.items()):
            out.print(f"  {shown(name)}: {count} ({shown(reason)})")
    if lacking := sorted(name for name, (count, _) in summary.short.items() if count == 0):
        out.print(f"{len(lacking)} classes have no usable description: {shown(', '.join(lacking))}. Purification "
                  "scores them by class name. The next run asks again; if the model keeps refusing, try "
                  "another --llm-model or write descriptions yourself and add them with --import-json FILE.")
    if summary.failed:
        err.print(f"[red]{len(summary.failed)} classes had failed requests[/] (run again to retry them)")


def serve(
    model: Annotated[str | None, typer.Option(
        help=f"Model to serve: a hub name, a local model folder or {SMOLLM2_NAME} (default "
        f"{DEFAULT_VLLM_MODEL}, or {SMOLLM2_NAME} with vLLM's CPU build).")] = None,
    vllm_env: Annotated[str | None, typer.Option(
        envvar="FREECP_VLLM_ENV", help="The virtualenv holding vLLM (made by scripts/install-vllm.sh).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0 picks a free one).")] = 8000,
    chat_template: Annotated[str | None, typer.Option(
        help="Chat template (default prompts/vicuna-v1.1.jinja for Vicuna models).")] = None,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for the server to answer.")] = 900.0,
) -> None:
    """Start the local vLLM server (an OpenAI-compatible API) until Ctrl-C."""
    from freecp.describe.client import LLMError
    from freecp.describe.serve import LocalServer, server_command

    with _user_errors():
        command = server_command(model, vllm_env=vllm_env, host=host, port=port or None, chat_template=chat_template)
        server = LocalServer(command)
        err.print(f"starting {command.engine} serving {command.model} (log: {server.log_path}) ...", markup=False)
        try:
            server.start(ready_timeout)
            out.print(f"LLM server ready: --llm-url {server.url} --llm-model {server.model}", markup=False)
            out.print("press Ctrl-C to stop")
            sys.stdout.flush()
            while server.running():
                time.sleep(0.5)
            raise LLMError(f"the vLLM server exited on its own; see {server.log_path}")
        except KeyboardInterrupt:
            server.stop()
            out.print("LLM server stopped")
        finally:
            server.stop()
