"""Where a served request's time goes, from Triton's request trace (`moe serve --trace-file`,
`moe bench --trace-rate`): for each traced entry request, the HTTP front end's share (reading
the request, building it, writing the answer) and the ensemble's, and inside the ensemble each
step's hand-over, queue and compute. Triton's statistics give per-model sums; the trace gives
each request's timeline, which is what places a queue that is in no model.

    python -m bench.trace build/bench/trace.json          # a markdown table
    python -m bench.trace build/bench/trace.json --json summary.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Trace:
    id: int
    model: str | None = None
    parent: int | None = None
    ns: dict[str, int] = field(default_factory=dict)  # first time each event was recorded

    def span(self, start: str, end: str) -> float | None:
        """Milliseconds from one event to another, None where either was not recorded."""
        if start in self.ns and end in self.ns:
            return (self.ns[end] - self.ns[start]) / 1e6
        return None


def trace_files(path: Path) -> list[Path]:
    """Where Triton put the traces of `--trace-config triton,file=PATH`: every `log-frequency`
    traces go to PATH.0, PATH.1, ... as they are collected, the rest to PATH at a clean
    shutdown (a server killed at the end leaves the numbered files only)."""
    path = Path(path)
    numbered = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    found = sorted(numbered, key=lambda p: int(p.suffix[1:])) + ([path] if path.exists() else [])
    if not found:
        raise FileNotFoundError(
            f"no trace at {path} (nor {path.name}.0, ...): was the server started with a trace file?"
        )
    return found


def load_traces(path: Path) -> dict[int, Trace]:
    """Triton writes a trace as fragments sharing its id (the model, then each timestamp as it
    happens); merged here into one Trace per id."""
    traces: dict[int, Trace] = {}
    fragments = [f for file in trace_files(path) for f in json.loads(file.read_text())]
    for fragment in fragments:
        trace = traces.setdefault(fragment["id"], Trace(fragment["id"]))
        trace.model = fragment.get("model_name", trace.model)
        trace.parent = fragment.get("parent_id", trace.parent)
        for stamp in fragment.get("timestamps", []):
            trace.ns.setdefault(stamp["name"], stamp["ns"])
    return traces


# The entry request's timeline, in order: (segment, from event, to event).
ENTRY_SEGMENTS = (
    ("HTTP: read the request", "HTTP_RECV_START", "HTTP_RECV_END"),
    ("HTTP: parse it, build the request", "HTTP_RECV_END", "REQUEST_START"),
    ("ensemble (or model): request to response", "REQUEST_START", "INFER_RESPONSE_COMPLETE"),
    ("HTTP: answer to JSON", "INFER_RESPONSE_COMPLETE", "HTTP_SEND_START"),
    ("HTTP: write the answer", "HTTP_SEND_START", "HTTP_SEND_END"),
)
# Each step of an ensemble (a composing model's request).
STEP_SEGMENTS = (
    ("queue", "QUEUE_START", "COMPUTE_START"),
    ("compute: inputs", "COMPUTE_START", "COMPUTE_INPUT_END"),
    ("compute: infer", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START"),
    # A step's answer goes on to the next step while its outputs are still being finished (the
    # backend sends the response before its execution ends), and the request is released after:
    # beside what follows.
    ("outputs and release (beside what follows)", "COMPUTE_OUTPUT_START", "REQUEST_END"),
)
# Where a step's answer can first move on: the hand-over to the next step is counted from here.
STEP_ANSWER = "COMPUTE_OUTPUT_START"


def _stats(values: list[float]) -> dict:
    values = sorted(values)
    return {
        "n": len(values),
        "mean_ms": round(statistics.fmean(values), 4),
        "p50_ms": round(values[len(values) // 2], 4),
        "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 4),
    }


def summarize(traces: dict[int, Trace]) -> dict:
    """Per entry model: each segment of its timeline, and per step the hand-over before it (from
    the ensemble's start or the previous step's answer to this step's start) and its own
    segments."""
    children: dict[int, list[Trace]] = defaultdict(list)
    for t in traces.values():
        if t.parent is not None:
            children[t.parent].append(t)
    segments: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for entry in traces.values():
        if entry.parent is not None or entry.model is None:
            continue
        rows = segments[entry.model]
        for name, start, end in ENTRY_SEGMENTS:
            if (ms := entry.span(start, end)) is not None:
                rows[name].append(ms)
        if (ms := entry.span("HTTP_RECV_START", "HTTP_SEND_END")) is not None:
            rows["server: first byte read to last byte written"].append(ms)
        previous_end = entry.ns.get("REQUEST_START")
        for step in sorted(children.get(entry.id, []), key=lambda t: t.ns.get("REQUEST_START", 0)):
            if previous_end is not None and "REQUEST_START" in step.ns:
                rows[f"{step.model}: hand-over before it"].append((step.ns["REQUEST_START"] - previous_end) / 1e6)
            for name, start, end in STEP_SEGMENTS:
                if (ms := step.span(start, end)) is not None:
                    rows[f"{step.model}: {name}"].append(ms)
            previous_end = step.ns.get(STEP_ANSWER, previous_end)
        if previous_end is not None and "INFER_RESPONSE_COMPLETE" in entry.ns and children.get(entry.id):
            rows["ensemble: after its last step"].append((entry.ns["INFER_RESPONSE_COMPLETE"] - previous_end) / 1e6)
    return {model: {name: _stats(v) for name, v in rows.items()} for model, rows in segments.items()}


def markdown(summary: dict) -> str:
    lines = []
    for model, rows in summary.items():
        n = max(r["n"] for r in rows.values())
        lines += [f"**{model}** ({n} traced requests)", "", "| segment | mean ms | p50 ms | p99 ms |"]
        lines.append("|---|---:|---:|---:|")
        for name, r in rows.items():
            lines.append(f"| {name} | {r['mean_ms']:.3f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", type=Path, help="the JSON file Triton wrote (--trace-config triton,file=...)")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    summary = summarize(load_traces(args.trace))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
