"""Describe throughput against a real local LLM server: concurrency 1 vs N, and a cache-hit re-run.

Starts ``transformers serve`` on the bundled SmolLM2-135M-Instruct (converted once into
``.ci-cache/smollm2-hf``) unless ``--llm-url`` points at a running server, describes the same
classes twice into fresh caches (once with one request in flight, once with ``--concurrency``),
then re-runs the second one against its now complete cache. Prints descriptions and requests
per second for each and their ratio; on a batching server (vLLM, or ``--continuous-batching``)
the ratio shows what keeping it busy buys.

    python benchmarks/describe_throughput.py [--classes 6] [--concurrency 8] [--continuous-batching]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from freecp.describe.convert import convert_smollm2
from freecp.describe.run import DescribeSummary, describe_vocabulary
from freecp.describe.serve import LocalServer, free_port, transformers_command
from freecp.stores.descriptions import DescriptionCache
from freecp.vocab import load_vocabulary

REPO = Path(__file__).resolve().parents[1]


def timed_run(vocab, cache: str, url: str, model: str, concurrency: int, args) -> tuple[float, DescribeSummary, int]:
    start = time.perf_counter()
    summary = describe_vocabulary(vocab, llm_url=url, llm_model=model, cache=cache, per_class=args.per_class,
                                  concurrency=concurrency, max_tokens=args.max_tokens, max_requests=args.max_requests)
    seconds = time.perf_counter() - start
    described = sum(len(texts) for texts in DescriptionCache(cache).descriptions_for(vocab).values())
    return seconds, summary, described


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", default="voc21", help="vocabulary to take classes from")
    parser.add_argument("--classes", type=int, default=6, help="how many of its classes to describe")
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-requests", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--llm-url", help="use this running server instead of starting one")
    parser.add_argument("--llm-model", help="model name on --llm-url")
    parser.add_argument("--continuous-batching", action="store_true", help="start transformers serve with it")
    args = parser.parse_args()

    full = load_vocabulary(args.vocab)
    lines = [", ".join(full.classes[i].names) for i in full.foreground_indices[:args.classes]]
    vocab = load_vocabulary(lines)
    server = None
    if args.llm_url:
        url, model = args.llm_url, args.llm_model
    else:
        folder = convert_smollm2(REPO / ".ci-cache" / "smollm2-hf")
        server = LocalServer(transformers_command(folder, host="127.0.0.1", port=free_port(),
                                                  continuous_batching=args.continuous_batching)).start()
        url, model = server.url, server.model
    try:
        with tempfile.TemporaryDirectory() as root:
            rows = []
            for label, concurrency in (("concurrency 1", 1), (f"concurrency {args.concurrency}", args.concurrency)):
                cache = str(Path(root) / label.replace(" ", "-"))
                rows.append((label, *timed_run(vocab, cache, url, model, concurrency, args)))
            rerun = timed_run(vocab, cache, url, model, args.concurrency, args)
    finally:
        if server:
            server.stop()

    print(f"server: {url} model {model}; {len(vocab)} classes, max_tokens {args.max_tokens}")
    rates = []
    for label, seconds, summary, described in rows:
        rates.append((described / seconds, summary.requests_sent / seconds))
        print(f"{label:>16}: {summary.requests_sent} requests, {described} descriptions in {seconds:6.1f} s = "
              f"{rates[-1][0]:.2f} descriptions/s, {rates[-1][1]:.2f} requests/s")
    print(f"ratio concurrency {args.concurrency} / 1: {rates[1][0] / rates[0][0]:.2f}x descriptions/s, "
          f"{rates[1][1] / rates[0][1]:.2f}x requests/s")
    seconds, summary, _ = rerun
    print(f"cache-hit re-run: {seconds:.3f} s, {summary.requests_sent} requests sent, {summary.cache_hits} cache hits "
          f"({rows[1][1] / seconds:.0f}x faster than generating)")


if __name__ == "__main__":
    main()
