"""Microbenchmark of the MoE feed-forward layer on a GPU.

Compares, in bf16, on the same random tokens and the same router:

  sparse_sort       moe.model.MoEFeedForward as it is: router, dispatch_plan (stable argsort +
                    bincount().tolist()), a loop over experts on contiguous chunks, combine by
                    GATHERING the expert outputs back into [token, k] order and a weighted sum
                    over k (no atomics). (In docs/gpu_moe_layer.md's run this was the variant
                    "sparse_sort_gather"; "sparse_sort" there was the index_add combine below.)
  sparse_sort_index_add   the same with the model's earlier combine: an atomic index_add.
  sparse_sort_copy  the same, but combine by un-permuting the weighted slot outputs
                    (index_copy) and summing the k slots of each token: no atomics, no zeros.
  sparse_sort_gather_bmm  the model's gather, the weighted sum over k as one bmm.
  mask_loop         the naive loop of older implementations: for e: (ids == e).nonzero(), gather,
                    expert, index_add.
  dense             a dense FFN with the same ACTIVE parameters per token (hidden width
                    d_ff * top_k, one matmul pair on all tokens): the speed-of-light reference.
  grouped_mm        torch._grouped_mm over the experts' weights stacked [E, d, f] (stacked inside
                    the timed call, as the model would have to with its per-expert modules); no
                    host sync.
  grouped_mm_prestacked   the same with the weights stacked once, outside the timed region.
  compiled_grouped_mm     torch.compile of grouped_mm_prestacked (CUDA only, time permitting).
  compiled_sparse_sort    torch.compile of MoEFeedForward (CUDA only, time permitting).

FLOPs counted per call: 2 * tokens * top_k * (2 * d_model * d_ff)  (the experts' FFNs)
                      + 2 * tokens * d_model * n_experts          (the router),
the same count for every variant (the dense FFN does the expert part and no router), so TFLOP/s
compare directly; "ratio to dense" is dense time / variant time.

Every variant's output is checked against sparse_sort's (bf16 tolerance) before it is timed, and
the dispatch variants that can run in fp32 are checked against sparse_sort in fp32 (1e-5).

The variants: bench/moe_layer/variants.py; the run: bench/moe_layer/run.py; the report:
bench/moe_layer/report.py. Run from the project's root with the project installed (or on
PYTHONPATH, as scripts/gpu/setup.sh sets it).

Usage:
  python3 bench/moe_layer_gpu.py --out DIR                 # on a GPU: full run, JSON + Markdown
  python3 bench/moe_layer_gpu.py --smoke --out DIR         # CPU, tiny sizes, a few seconds
  python3 bench/moe_layer_gpu.py --plot-from DIR/moe_layer_gpu.json --img docs/img/gpu_moe_layer.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench.moe_layer.report import plot, render_markdown
from bench.moe_layer.run import LayerBench


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, a few seconds")
    ap.add_argument("--out", default=os.environ.get("OUT", "build/bench"), help="output folder")
    ap.add_argument("--tokens", default="", help="comma-separated token counts")
    ap.add_argument("--configs", default="", help="comma-separated config names (default: all)")
    ap.add_argument("--variants", default="", help="comma-separated variants (default: all)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop starting new work after this")
    ap.add_argument("--rel-tol", type=float, default=1e-2, help="bf16 check: relative L2 error")
    ap.add_argument("--plot-from", default="", help="only render Markdown + PNG from this JSON")
    ap.add_argument("--img", default="", help="PNG path (default: OUT/moe_layer_gpu.png)")
    args = ap.parse_args(argv)

    out = Path(args.out)
    if args.plot_from:
        data = json.loads(Path(args.plot_from).read_text())
    else:
        data = LayerBench(args).run()
        out.mkdir(parents=True, exist_ok=True)
        (out / "moe_layer_gpu.json").write_text(json.dumps(data, indent=1) + "\n")
    md = render_markdown(data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "moe_layer_gpu.md").write_text(md)
    print(md)
    img = Path(args.img) if args.img else out / "moe_layer_gpu.png"
    try:
        plot(data, img)
        print(f"# plot: {img}")
    except ImportError as exc:
        print(f"# no plot ({exc}); render it elsewhere with --plot-from {out / 'moe_layer_gpu.json'}")
    bad = [r for r in data["results"] if "check" in r and not r["check"]["ok"]]
    bad += [r for r in data["fp32_check"] if r.get("variant") != "grouped_mm" and not r.get("ok_1e-5", False)]
    if bad:
        print(f"# CHECK FAILURES: {bad}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
