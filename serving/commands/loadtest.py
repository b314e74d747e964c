"""`moe loadtest`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from moe.data import DEFAULT_DATA

from ..server import local_server
from .common import comma_list, exported, friendly_errors


@click.command()
@click.option("--url", help="gRPC address of a running server (default: start one on free ports)")
@click.option(
    "--repository", type=click.Path(path_type=Path), help="repository to serve (default: build/, exported on first use)"
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="checkpoint whose eager labels every answer is checked against (default: bundled)",
)
@click.option("--data", default=DEFAULT_DATA, show_default=True)
@click.option("--requests", default=10000, show_default=True)
@click.option("--concurrency", default=64, show_default=True)
@click.option("--workflows", default="v1,v2", show_default=True)
@click.option("--json-out", type=click.Path(path_type=Path), help="write the summary as JSON here")
@friendly_errors
def loadtest(url, repository, checkpoint, data, requests, concurrency, workflows, json_out):
    """Closed-loop load of mixed workflows and batch sizes; every answer checked against eager."""
    from bench.baseline import eager_labels
    from moe.data import load_split

    texts = load_split(data, "test").texts
    plan = load_plan(texts, requests, workflows)
    click.echo(f"eager reference labels for {len(texts)} test texts ...")
    labels = eager_labels(checkpoint, texts)
    if url is None:
        with local_server(exported(repository, checkpoint)) as server:
            url = server.grpc_url
            result = run_load(url, plan, requests, concurrency)
    else:
        result = run_load(url, plan, requests, concurrency)
    summary = {
        "url": url,
        "concurrency": concurrency,
        **result.summary(),
        "wrong_answers": result.wrong_answers(plan, labels),
    }
    click.echo(json.dumps(summary, indent=2))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary, indent=2) + "\n")
    if summary["errors"] or summary["wrong_answers"]:
        sys.exit(1)


def load_plan(texts: list, requests: int, workflows: str) -> list:
    from bench.load import mixed_plan

    return mixed_plan(texts, requests, workflows=tuple(comma_list(workflows)))


def run_load(url: str, plan: list, requests: int, concurrency: int):
    import asyncio

    from tqdm.auto import tqdm

    from bench.load import closed_loop
    from moe_client import AsyncMoEClient

    async def run():
        async with AsyncMoEClient(url, protocol="grpc", timeout=60, retries=0) as client:
            with tqdm(total=requests, desc=f"load x{concurrency}", unit="req") as bar:
                return await closed_loop(client, plan, concurrency, progress=bar.update)

    return asyncio.run(run())
