"""`moe classify`."""

from __future__ import annotations

import dataclasses
import json

import click

from moe.errors import MoEError

from .common import friendly_errors


@click.command()
@click.argument("texts", nargs=-1)
@click.option(
    "--workflow",
    type=click.Choice(["v1", "v2"]),
    default="v2",
    show_default=True,
    help="v1 distributed pipeline, v2 monolith",
)
@click.option("--url", help="host:port of the server (default: localhost:8000 for http, localhost:8001 for grpc)")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True)
@click.option(
    "--file",
    "file",
    type=click.File("r", encoding="utf-8"),
    help="read one text per line ('-' for stdin); blank lines are skipped",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per text")
@click.option("--routing", is_flag=True, help="tokens each expert got in each layer (--workflow v1)")
@click.option("--timeout", default=30.0, show_default=True, help="seconds per request")
@friendly_errors
def classify(texts, workflow, url, protocol, file, as_json, routing, timeout):
    """Classify TEXTS (and the lines of --file) with the model served by tritonserver."""
    from moe_client import MoEClient, MoEClientError

    texts = list(texts) + ([line.rstrip("\r\n") for line in file if line.strip()] if file else [])
    if not texts:
        raise MoEError("nothing to classify: give TEXTS or --file")
    if routing and workflow != "v1":
        raise MoEError("--routing needs --workflow v1 (the monolith does not report routing)")
    url = url or ("localhost:8000" if protocol == "http" else "localhost:8001")
    try:
        with MoEClient(url, protocol=protocol, workflow=workflow, timeout=timeout) as client:
            predictions = client.classify(texts, return_routing=routing)
    except MoEClientError as e:
        raise MoEError(str(e)) from e
    if as_json:
        for p in predictions:
            click.echo(json.dumps(dataclasses.asdict(p)))
        return
    width = min(60, max(len("TEXT"), *(len(t) for t in texts)))
    click.echo(f"{'TEXT':<{width}}  {'LABEL':<8}  CONFIDENCE" + ("  EXPERT TOKENS PER LAYER" if routing else ""))
    for p in predictions:
        text = " ".join(p.text.split())
        text = text if len(text) <= width else text[: width - 3] + "..."
        row = f"{text:<{width}}  {p.label:<8}  {p.confidence:>10.1%}"
        if routing:
            row += "  " + " | ".join(" ".join(map(str, layer)) for layer in p.expert_tokens)
        click.echo(row)
