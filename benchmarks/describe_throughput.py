"""Describe throughput through the real vLLM: the live path at two concurrencies against run_batch.

One run, side by side, on the same requests: a vocabulary (default voc21) with the reference's 20
descriptions per class and a budget of one wave (``--max-requests 4``: four questions per class,
the same list of requests each way), each way into a fresh cache:

- live: ``freecp.describe.serve`` starts the vLLM server (start-up timed to its first answer),
  then ``describe_vocabulary`` sends the requests at concurrency 8 and at 32;
- run_batch: ``describe_offline`` (``freecp describe --run-batch``) runs vLLM's ``run_batch`` on
  the same requests; its start-up is taken to be the server's, measured just before.

Tokens are the answers' tokens counted with the model's own tokenizer, the same way for every
path. The target: after start-up, live at 32 reaches at least 80 % of run_batch's tokens/s.

    python benchmarks/describe_throughput.py [--vocab voc21] [--per-class 20] [--max-requests 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer

from freecp.describe.batch import describe_offline
from freecp.describe.run import DescribeSummary, describe_vocabulary, model_to_ask
from freecp.jobs import DescribeJob
from freecp.describe.serve import LocalServer, find_vllm, local_model, server_command
from freecp.stores.descriptions import DescriptionCache
from freecp.vocab import load_vocabulary


def answer_tokens(cache: DescriptionCache, tokenizer: Tokenizer) -> int:
    return sum(len(tokenizer.encode(entry.raw_answer).ids) for entry in cache.entries())


def row(label: str, seconds: float, summary: DescribeSummary, tokens: int, startup: float | None) -> dict:
    return {"label": label, "startup": startup, "seconds": seconds, "requests": summary.requests_sent,
            "tokens": tokens, "rps": summary.requests_sent / seconds, "tps": tokens / seconds,
            "described": summary.classes_done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", default="voc21")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--max-requests", type=int, default=4, help="per class (4 = one wave for 20 per class)")
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--llm-model", help="default: the vLLM environment's default model")
    args = parser.parse_args()

    vocab = load_vocabulary(args.vocab)
    install = find_vllm()
    model = model_to_ask(None, args.llm_model)
    folder = local_model(model)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    plan = dict(per_class=args.per_class, max_requests=args.max_requests, max_tokens=args.max_tokens,
                temperature=DescribeJob.temperature)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        server = LocalServer(server_command(model))
        started = time.perf_counter()
        server.start()
        startup = time.perf_counter() - started
        try:
            for concurrency in (8, 32):
                cache = DescriptionCache(Path(root) / f"live-{concurrency}")
                begin = time.perf_counter()
                summary = describe_vocabulary(vocab, llm_url=server.url, llm_model=server.model, cache=cache,
                                              concurrency=concurrency, structured=True, **plan)
                rows.append(row(f"live, concurrency {concurrency}", time.perf_counter() - begin, summary,
                                answer_tokens(cache, tokenizer), startup))
        finally:
            server.stop()
        cache = DescriptionCache(Path(root) / "run-batch")
        begin = time.perf_counter()
        summary = describe_offline(vocab, cache=cache, llm_model=model, **plan)
        whole = time.perf_counter() - begin
        batch = row("run_batch (whole)", whole, summary, answer_tokens(cache, tokenizer), None)
        rows.append(batch)
        rows.append(row("run_batch, after start-up", whole - startup, summary, batch["tokens"], startup))

    load = os.getloadavg()
    print(f"{install.label}, model {server.model}; {args.vocab}: {len(vocab) - 1} classes, per_class "
          f"{args.per_class}, max_requests {args.max_requests}, max_tokens {args.max_tokens}; "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"{'':>28} {'start-up s':>10} {'wall s':>8} {'requests':>8} {'req/s':>6} {'tokens':>7} {'tokens/s':>8}")
    for r in rows:
        up = f"{r['startup']:.0f}" if r["startup"] is not None else "in wall"
        print(f"{r['label']:>28} {up:>10} {r['seconds']:8.1f} {r['requests']:8d} {r['rps']:6.2f} "
              f"{r['tokens']:7d} {r['tps']:8.1f}")
    ratio = rows[1]["tps"] / rows[-1]["tps"]
    print(f"live at 32 / run_batch after start-up, tokens/s: {ratio:.2f} (target >= 0.80: "
          f"{'met' if ratio >= 0.8 else 'NOT met'})")


if __name__ == "__main__":
    main()
