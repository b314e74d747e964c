"""`moe bench` results as files: bench.json, bench.md and the plots."""

from __future__ import annotations

import json
from pathlib import Path


def _fmt(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(result: dict) -> str:
    m, opts, server = result["machine"], result["options"], result["server"]
    gpus = f", GPUs: {', '.join(m['gpus'])}" if m.get("gpus") else ""
    # As asked, and what "auto" chose.
    asked, used = opts.get("load_client", "moe_client"), result.get("load_client", "moe_client")
    load_client = asked if asked == used else f"{asked}: {used}"
    per_level = (
        f"{opts.get('level_seconds')} s per level, every answer checked"
        if used == "wrk"
        else f"{opts['requests'] or '300 (at least 20 per worker)'} timed requests per level"
    )
    lines = [
        f"Machine: {m['cpu_model']}, {m['cores']} cores{gpus}, torch {m['torch']}; "
        f"Triton {server.get('triton_version')}; protocol {opts['protocol']}, "
        f"load client {load_client}, {per_level}; "
        f"in-process baselines on {opts['device']}; "
        f"load average at start {result['load_average_start']}, at end {result.get('load_average_end')}.",
        "",
    ]
    if result.get("command"):
        lines += [f"Command: `{result['command']}`", ""]
    lines += [
        "| workflow | texts per request | concurrency | texts/s | p50 ms | p95 ms | p99 ms | errors | "
        "agrees with eager | load generator, % of a core | load generator's ceiling, req/s | "
        "host: busy cores, CPU ms per request | GPU busy, % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    sizes = result["baselines"]["batch_sizes"]
    for b in sizes["per_request"]:
        base = result["baselines"][str(b)]
        rows = [("in-process eager", b, base["per_request"])]
        if "batched" in base:
            rows.append(("in-process eager, batched", sizes["batched"], base["batched"]))
        for name, size, s in rows:
            lines.append(
                f"| {name} | {size} | 1 | {s['throughput']:.1f} | {_fmt(s['p50_ms'])} | "
                f"{_fmt(s['p95_ms'])} | {_fmt(s['p99_ms'])} | 0 | 1.0000 | | | | |"
            )
        for lv in sorted(
            (lv for lv in result["levels"] if lv["batch_size"] == b), key=lambda lv: (lv["workflow"], lv["concurrency"])
        ):
            load_cpu = _fmt(100 * lv["load_cpu_share"], 0) if "load_cpu_share" in lv else ""
            ceiling = lv.get("load_ceiling_requests_per_s")
            ceiling = (
                "" if ceiling is None else f"{ceiling:,.0f}" + (" (**client-bound**)" if lv["client_bound"] else "")
            )
            host = ""
            if "host_busy_cores" in lv:
                host = f"{_fmt(lv['host_busy_cores'])}, {_fmt(lv['host_cpu_ms_per_request'], 3)}"
            gpu = ", ".join(_fmt(p, 0) for p in lv.get("gpu_busy_percent") or [])
            lines.append(
                f"| {lv['workflow']} | {b} | {lv['concurrency']} | {lv['throughput']:.1f} | "
                f"{_fmt(lv['p50_ms'])} | {_fmt(lv['p95_ms'])} | {_fmt(lv['p99_ms'])} | {lv['errors']} | "
                f"{_fmt(lv['agreement_with_eager'], 4)} | {load_cpu} | {ceiling} | {host} | {gpu} |"
            )
    lines += ["", "| target | required | measured | met |", "|---|---|---:|---|"]
    for t in result["targets"]:
        lines.append(
            f"| {t['what']} | {t['target']} | {_fmt(t['measured'], 3)} | "
            f"{'yes' if t['met'] else ('–' if t['met'] is None else '**no**')} |"
        )
    mem = server.get("memory_peak") or server.get("memory_ready")
    if mem:
        lines += [
            "",
            f"Server memory (peak over the run): RSS {mem['rss_mb']:.0f} MB summed over "
            f"{mem['processes']} processes, {mem['python_stubs']} of them Python stubs "
            f"(tritonserver {mem['tritonserver_rss_mb']:.0f} MB); PSS (shared pages counted once) "
            f"{mem['pss_mb']:.0f} MB.",
        ]
        if mem.get("gpu_mb"):
            lines.append(
                "GPU memory by process (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in mem["gpu_mb"].items()) + "."
            )
    for lv in result["levels"]:
        if "stages" not in lv:
            continue
        bls = lv["breakdown"].get("bls") or {}
        lines += [
            "",
            f"v1 breakdown, {lv['batch_size']} texts per request, concurrency {lv['concurrency']} "
            f"(ms per request; {bls.get('batches', '–')} BLS batches, "
            f"{_fmt(bls.get('requests_per_batch'))} requests per batch; "
            f"client p50 {_fmt(lv['p50_ms'])} ms, mean {_fmt(lv['mean_ms'])} ms):",
            "",
            "| stage | BLS wall time | Triton compute_infer | Triton queue |",
            "|---|---:|---:|---:|",
        ]
        for row in lv["stages"]:
            lines.append(
                f"| {row['stage']} | {_fmt(row['bls_wall_ms'], 3)} | "
                f"{_fmt(row['triton_compute_ms'], 3)} | {_fmt(row['triton_queue_ms'], 3)} |"
            )
    return "\n".join(lines) + "\n"


def plot_throughput_latency(result: dict, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["baselines"]["batch_sizes"]["per_request"]
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11, 4.2 * len(sizes)), squeeze=False)
    for row, b in enumerate(sizes):
        base = result["baselines"][str(b)]
        for workflow, style, color in (("v1", "o-", "C0"), ("v2", "s-", "C1")):
            lv = [x for x in result["levels"] if x["workflow"] == workflow and x["batch_size"] == b]
            if not lv:
                continue
            cs = [x["concurrency"] for x in lv]
            axes[row, 0].plot(cs, [x["throughput"] for x in lv], style, color=color, label=f"{workflow} (Triton)")
            answered = [x for x in lv if x["p50_ms"] is not None]  # a level whose every request failed has none
            cs = [x["concurrency"] for x in answered]
            axes[row, 1].plot(cs, [x["p99_ms"] for x in answered], style, color=color, label=f"{workflow} p99")
            axes[row, 1].plot(
                cs, [x["p50_ms"] for x in answered], style, color=color, alpha=0.35, label=f"{workflow} p50"
            )
        axes[row, 0].axhline(base["per_request"]["throughput"], color="k", ls="--", label="in-process eager")
        if "batched" in base:
            axes[row, 0].axhline(
                base["batched"]["throughput"],
                color="k",
                ls=":",
                label=f"in-process eager, batches of {result['baselines']['batch_sizes']['batched']}",
            )
        axes[row, 1].axhline(base["per_request"]["p50_ms"], color="k", ls="--", label="in-process eager p50")
        for ax, ylabel in zip(axes[row], ("texts / s", "latency (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency (closed loop)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[row, 1].set_yscale("log")
        axes[row, 0].set_title(f"throughput, {b} text{'s' if b > 1 else ''} per request")
        axes[row, 1].set_title(f"latency, {b} text{'s' if b > 1 else ''} per request")
    m = result["machine"]
    fig.suptitle(
        f"{', '.join(m.get('gpus', [])) or m['cpu_model']}, {m['cores']} cores; {result['options']['protocol']}",
        fontsize=9,
    )
    fig.tight_layout()
    path = out / "bench_throughput_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_v1_stages(result: dict, out: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v1 = [lv for lv in result["levels"] if "stages" in lv and lv["mean_ms"] is not None]
    if not v1:
        return None
    fig, ax = plt.subplots(figsize=(11, 0.9 + 0.7 * len(v1)))
    colors = plt.get_cmap("tab10").colors
    names = [r["stage"] for r in v1[0]["stages"] if not r["stage"].startswith("moe_bls")]
    for row, lv in enumerate(v1):
        stages = {r["stage"]: r for r in lv["stages"]}
        left = 0.0
        for i, name in enumerate(names):
            r = stages.get(name, {})
            wall = r.get("bls_wall_ms") or 0.0
            # The pieces' own Triton compute time; the BLS's extra wall time (the call, IPC,
            # waiting) hatched on top. Experts run concurrently: their summed compute can
            # exceed the wall time the BLS waits for them (the table has both).
            compute = wall if name == "orchestration" else (r.get("triton_compute_ms") or 0.0)
            if wall and name != "orchestration":
                compute = min(compute, wall)
            ax.barh(row, compute, left=left, color=colors[i % 10], label=name if row == 0 else None)
            left += compute
            extra = max(0.0, wall - compute)
            if extra:
                ax.barh(
                    row,
                    extra,
                    left=left,
                    color=colors[i % 10],
                    alpha=0.35,
                    hatch="//",
                    label=f"{name}: BLS wait/IPC" if row == 0 else None,
                )
                left += extra
    ax.set_yticks(
        range(len(v1)),
        [f"v1, {lv['batch_size']} text(s), C={lv['concurrency']}\n(latency mean {lv['mean_ms']:.0f} ms)" for lv in v1],
    )
    ax.set_xlabel(
        "ms of service time per request (Triton statistics; the rest of the client latency is "
        "queueing, the ensemble and the protocol)"
    )
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(v1) < 3 else -0.2))
    ax.set_title("v1 stage breakdown", fontsize=9)
    fig.tight_layout()
    path = out / "bench_v1_stages.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def write(result: dict, out: Path, plots: bool = True) -> None:
    result["files"] = ["bench.json", "bench.md"]
    if plots:
        result["files"] += [f for f in (plot_throughput_latency(result, out), plot_v1_stages(result, out)) if f]
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "bench.md").write_text(markdown(result))
