"""``freecp encode`` (texts into an embedding store) and ``freecp store ls|inspect|compact``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from freecp.commands import exits, store_check
from freecp.commands.progress import progress_bars
from freecp.commands.options import with_jobs
from freecp.commands.text import shown
from freecp.jobs import EncodeJob

# The library (torch, open_clip, pyarrow) is imported inside the commands, so `freecp --help`
# and a mistyped option answer at once.

StoreUrl = Annotated[str, typer.Argument(help="Store root: a local directory or s3://bucket/prefix.")]
VocabArg = Annotated[str, typer.Argument(help="A shipped vocabulary name (voc21, ade150, ...) or a file.")]
ModelKeyOpt = Annotated[Optional[str], typer.Option(
    "--model-key", help="Only this model (as `freecp store ls` shows it, e.g. ViT-B-16/openai).")]

store_app = typer.Typer(help="Look into and maintain an embedding store.", no_args_is_help=True)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn expected failures (bad input, missing weights; an unusable or unreachable store: exit
    4) into one message."""
    from freecp.clip import WeightsUnavailableError
    from freecp.stores.fs import StoreError, StoreUnusableError, first_line

    try:
        yield
    except (StoreUnusableError, OSError) as err:
        _error_line(first_line(err), exits.STORAGE)
    except (StoreError, WeightsUnavailableError, ValueError) as err:
        _error_line(str(err), exits.SOME_FAILED)


def _error_line(text: str, code: int) -> None:
    Console(stderr=True).print(f"[red]error:[/red] {shown(text)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def _table(title: str, *headers: str) -> Table:
    """A table whose cells wrap instead of being cut, so model keys can be copied from it."""
    table = Table(title=title)
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


@with_jobs(job=EncodeJob)
def encode(
    vocab: VocabArg,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    *,
    job: EncodeJob,
) -> None:
    """Encode a vocabulary's class names (80 templates) and descriptions once into a store.

    Only texts the store lacks are encoded; a class shared with another vocabulary is reused.
    """
    from freecp.encoding import encode as encode_job
    from freecp.vocab import load_vocabulary

    with _user_errors(), progress_bars(progress) as on_progress:
        summary = encode_job(load_vocabulary(vocab), job, on_progress)
    typer.echo(summary.line())


@store_app.command("ls")
def store_ls(url: StoreUrl) -> None:
    """List the models in a store (distinct texts per kind) and the vocabularies encoded for each."""
    from freecp.stores.embeddings import EmbeddingStore

    with _user_errors():
        store = EmbeddingStore(url, create=False)
        models = store.list_models()
        vocabularies = store.list_vocabularies()
    if not models:
        typer.echo(f"{store.url}: no embeddings yet")
        return
    console = Console()
    table = _table(f"models in {store.url}", "model", "dim", "class names", "descriptions",
                   "description sets", "shards", "vocabularies")
    for m in models:
        table.add_row(m.model_key, str(m.dim), str(m.rows["class"]), str(m.rows["description"]),
                      str(m.rows["description_mean"]), str(m.shards), str(m.vocabularies))
    console.print(table)
    table = _table("vocabularies", "model", "vocabulary", "hash", "classes", "names", "described", "written")
    for v in vocabularies:
        table.add_row(shown(v.model_key), shown(v.name), v.content_hash, str(v.classes), str(v.queries),
                      str(v.described), v.written_at)
    console.print(table)


@store_app.command("inspect")
def store_inspect(url: StoreUrl, vocab: VocabArg, model_key: ModelKeyOpt = None) -> None:
    """Show a vocabulary's coverage per model: encoded names, classes with and without descriptions."""
    from freecp.stores.embeddings import EmbeddingStore
    from freecp.vocab import load_vocabulary

    with _user_errors():
        store = EmbeddingStore(url, create=False)
        vocabulary = load_vocabulary(vocab)
        keys = [model_key] if model_key else [m.model_key for m in store.list_models()]
        coverages = [store.inspect(vocabulary, key) for key in keys]
    if not coverages:
        typer.echo(f"{store.url}: no embeddings yet")
        return
    console = Console()
    for cov in coverages:
        status = "complete" if cov.complete else "INCOMPLETE: run `freecp encode`"
        table = _table(f"{shown(cov.vocabulary)} ({cov.content_hash}) with {shown(cov.model_key)}: {status}",
                       "#", "class", "names encoded", "descriptions")
        foreground = set(vocabulary.foreground_indices)
        for c in cov.classes:
            if c.index not in foreground:
                described = "background (no AP)"
            else:
                described = str(c.descriptions) if c.description_vector else "none (AP uses class names)"
            table.add_row(str(c.index), shown(", ".join(c.names)), f"{c.queries_present}/{len(c.names)}", described)
        console.print(table)
        console.print(f"foreground classes: {cov.described} with descriptions, "
                      f"{len(foreground) - cov.described} without")


@store_app.command("compact")
def store_compact(url: StoreUrl, model_key: ModelKeyOpt = None) -> None:
    """Merge each model's shards into one per kind (faster reads); safe while others use the store."""
    from freecp.stores.embeddings import EmbeddingStore

    with _user_errors():
        merged = EmbeddingStore(url, create=False).compact(model_key)
    for what, (shards, rows) in merged.items():
        typer.echo(f"{what}: {shards} shards -> 1 ({rows} rows)")
    if not merged:
        typer.echo("nothing to compact")


def register(app: typer.Typer) -> None:
    """Add ``encode`` and the ``store`` group to the app."""
    app.command(name="encode")(encode)
    store_check.register(store_app)
    app.add_typer(store_app, name="store")
