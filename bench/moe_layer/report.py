"""The layer benchmark's Markdown report and plot, from its JSON."""

from __future__ import annotations

import math
from pathlib import Path

from .variants import VARIANTS


def render_markdown(data: dict) -> str:
    env = data["env"]
    where = env.get("gpu") or env.get("cpu", "cpu")
    lines = [
        f"Machine: **{where}**, torch {env['torch']}"
        + (f", CUDA {env.get('cuda')}, driver {env.get('driver')}, {env.get('sm_count')} SMs" if env.get("gpu") else "")
        + f"; dtype {data['dtype']}.",
        "",
    ]
    if "matmul_ceiling_tflops" in data:
        lines += [f"bf16 8192x8192x8192 matmul on this card: {data['matmul_ceiling_tflops']:.0f} TFLOP/s.", ""]
    by_cfg: dict[str, list[dict]] = {}
    for r in data["results"]:
        by_cfg.setdefault(r["config"], []).append(r)
    for cname, rows in by_cfg.items():
        c = data["configs"][cname]
        variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
        tokens = sorted({r["tokens"] for r in rows})
        lines += [
            f"### `{cname}`: d_model {c['d_model']}, d_ff {c['d_ff']}, {c['n_experts']} experts, top-{c['top_k']}",
            "",
            "Ratio to dense (dense time / variant time; >= 0.7 is the target), TFLOP/s in brackets:",
            "",
        ]
        lines.append("| tokens | " + " | ".join(variants) + " |")
        lines.append("|---:|" + "---:|" * len(variants))
        for n in tokens:
            cells = []
            for v in variants:
                r = next((r for r in rows if r["tokens"] == n and r["variant"] == v), None)
                if r is None:
                    cells.append("")
                elif "ms" not in r:
                    cells.append("error")
                else:
                    bad = "" if r.get("check", {"ok": True})["ok"] else " **WRONG**"
                    cells.append(f"{r.get('ratio_to_dense', float('nan')):.2f} ({r['tflops']:.0f}){bad}")
            lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "<details><summary>all numbers</summary>",
            "",
            "| tokens | variant | median ms | p10-p90 ms | reps | Mtokens/s | TFLOP/s "
            "| ratio to dense | rel. err vs sparse_sort |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n in tokens:
            for v in variants:
                r = next((r for r in rows if r["tokens"] == n and r["variant"] == v), None)
                if r is None:
                    continue
                if "ms" not in r:
                    lines.append(f"| {n:,} | {v} | error: {r.get('error', '')[:80]} | | | | | | |")
                    continue
                chk = r.get("check")
                err = (
                    "reference"
                    if v == "sparse_sort"
                    else (
                        "n/a (other weights)"
                        if v == "dense"
                        else (f"{chk['rel_err']:.1e}" + ("" if chk["ok"] else " FAIL"))
                        if chk
                        else ""
                    )
                )
                lines.append(
                    f"| {n:,} | {v} | {r['ms']:.3f} | {r['ms_p10']:.3f}-{r['ms_p90']:.3f} "
                    f"| {r['reps']} | {r['tokens_per_s'] / 1e6:.2f} | {r['tflops']:.1f} "
                    f"| {r.get('ratio_to_dense', float('nan')):.2f} | {err} |"
                )
        lines += ["", "</details>", ""]
    if data.get("breakdown"):
        lines += ["### Where `sparse_sort` spends its time (largest token count, ms)", ""]
        keys = None
        for cname, b in data["breakdown"].items():
            if not keys:
                keys = [k for k in b if k != "tokens"]
                lines += ["| config | tokens | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
            lines.append(f"| {cname} | {b['tokens']:,} | " + " | ".join(f"{b[k]:.3f}" for k in keys) + " |")
        lines.append("")
    if data.get("gemm_only"):
        lines += ["### The expert FFNs alone, on tokens already grouped by expert (ms)", ""]
        keys = ["loop_linear", "grouped_mm_no_bias", "grouped_mm_with_bias_gather"]
        lines += ["| config | tokens | dense FFN | " + " | ".join(keys) + " |", "|---|---:|---:|" + "---:|" * len(keys)]
        for cname, g in data["gemm_only"].items():
            dn = next(
                (
                    r["ms"]
                    for r in data["results"]
                    if r["config"] == cname and r["tokens"] == g["tokens"] and r["variant"] == "dense" and "ms" in r
                ),
                math.nan,
            )
            lines.append(
                f"| {cname} | {g['tokens']:,} | {dn:.3f} | "
                + " | ".join(f"{g[k]:.3f}" if k in g else "" for k in keys)
                + " |"
            )
        lines.append("")
    if data.get("fp32_check"):
        lines += [
            "### fp32 exactness vs `sparse_sort` (tf32 off)",
            "",
            "| config | tokens | variant | max abs diff | <= 1e-5 |",
            "|---|---:|---|---:|---|",
        ]
        for r in data["fp32_check"]:
            if "error" in r:
                lines.append(f"| {r['config']} | {r['tokens']} | {r['variant']} | error: {r['error'][:80]} | |")
            else:
                lines.append(
                    f"| {r['config']} | {r['tokens']} | {r['variant']} | {r['max_abs_diff']:.2e} "
                    f"| {'yes' if r['ok_1e-5'] else 'NO'} |"
                )
        lines.append("")
    if data.get("compile"):
        lines += ["Compile (first call) seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in data["compile"].items()), ""]
    if data.get("skipped"):
        lines += ["Skipped: " + "; ".join(data["skipped"]), ""]
    lines += [f"Command: `{data['command']}` (wall {data.get('wall_s', 0):.0f} s)", ""]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = list(dict.fromkeys(r["config"] for r in data["results"]))
    fig, axes = plt.subplots(2, len(cfgs), figsize=(5.2 * len(cfgs), 8.5), squeeze=False)
    where = data["env"].get("gpu") or data["env"].get("cpu", "cpu")
    for j, cname in enumerate(cfgs):
        c = data["configs"][cname]
        rows = [r for r in data["results"] if r["config"] == cname and "ms" in r]
        for v in VARIANTS:
            rs = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["tokens"])
            if not rs:
                continue
            style = dict(marker="o", lw=1.6, ls="--" if v == "dense" else "-")
            if v == "dense":
                style.update(color="black")
            axes[0, j].plot([r["tokens"] for r in rs], [r["tflops"] for r in rs], label=v, **style)
            axes[1, j].plot(
                [r["tokens"] for r in rs], [r.get("ratio_to_dense", math.nan) for r in rs], label=v, **style
            )
        axes[0, j].set_title(
            f"{cname}: d {c['d_model']}, d_ff {c['d_ff']}, {c['n_experts']} experts, top-{c['top_k']}", fontsize=10
        )
        axes[0, j].set_ylabel("achieved TFLOP/s (expert FFNs + router)")
        axes[1, j].set_ylabel("ratio to dense FFN (same active params)")
        axes[1, j].axhline(0.7, color="red", lw=0.8, ls=":", label="target 0.7")
        for i in range(2):
            axes[i, j].set_xscale("log", base=2)
            axes[i, j].set_xlabel("tokens per call")
            axes[i, j].grid(True, which="both", alpha=0.3)
        axes[1, j].set_ylim(bottom=0)
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=8)
    fig.suptitle(f"MoE feed-forward layer, bf16, {where}, torch {data['env']['torch']}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
