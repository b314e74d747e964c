"""What `moe export` can be asked, and every default and decision that follows from it: the one
place they live (the CLI's options read their defaults from here). Imports no torch, so the CLI
starts fast."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .host_sizing import host_cores, size_host_stages

DEFAULT_OUT = Path("build")
# The dtypes v2's model may be written in (export/precision.py checks a half one before it is
# written); --full-model-dtype also takes "auto" (ExportOptions.full_model_dtype).
FULL_MODEL_DTYPES = ("float32", "float16", "bfloat16")
FULL_MODEL_DTYPE_CHOICES = ("auto", *FULL_MODEL_DTYPES)
# How tritonserver's threads may wait for the GPU (ExportOptions.gpu_wait).
GPU_WAITS = ("auto", "spin", "yield", "block")
# How a graphed batch may reach its experts (ExportOptions.full_model_graph_experts).
GRAPH_EXPERTS = ("auto", "dense", "blocked")
# ExportOptions.full_model_cuda_graphs on a GPU unless asked otherwise (its comment says why).
GPU_CUDA_GRAPHS = 128


@dataclass
class ExportOptions:
    device: str = "cpu"  # cpu | cuda
    gpus: int = 1  # GPUs to spread experts over with --device cuda
    max_batch_size: int = 64
    queue_delay_us: int = 0
    # Bounds on each entry model's queue (tokenizer, full_model, BLS, postprocessing): requests
    # past max_queue_size are rejected at once, and a request queued longer than queue_timeout_us
    # (or the shorter timeout it asks for; tritonserver 2.51 reads a request's own timeout only
    # where this one is set) is rejected; 0 and 0, the default: no bound, as Triton has it. Any
    # bound costs latency: a queue policy turns off the dynamic batcher's prefetching, and
    # tritonserver 2.51 then waits for a free instance in a way that can miss its wake-up and
    # sleep out its 500 ms poll. On 2 cores, v2 single texts at 2-16 connections: half of the
    # levels with 256 and 10 s had a p99 of 471-486 ms, none without (docs/reliability.md).
    max_queue_size: int = 0
    queue_timeout_us: int = 0
    # Where v1's orchestration runs: "auto" is where the pieces are (with --device cuda the BLS
    # keeps activations on GPU 0); "cpu" keeps it on the CPU whatever the pieces' device, so
    # every layer's activations cross to the host and back (kept to measure what that costs).
    bls_device: str = "auto"
    # v2's model: on the CPU two instances of one thread each (both cores busy without OpenMP
    # threads spinning against each other) and texts in length-sorted groups of 16; on a GPU
    # instances sized for the host's cores on every GPU (export/host_sizing.py) and one group.
    # None: by device. Measured: docs/benchmarks.md, docs/gpu_serving.md.
    full_model_instances: int | None = None
    length_group: int | None = None
    # float32, or float16 / bfloat16 where export/precision.py's gate passes (v2 then agrees with
    # v1 on labels, not to the last digit of the probabilities). "auto": float16 for a GPU where
    # the gate passes on the GPU the export runs on (v2 with batches of 32 on an H100: 96,123
    # texts/s against 70,661 in float32), else float32 (export/precision.py).
    full_model_dtype: str = "auto"
    # Where v2's model leaves its answer (probabilities, class ids): "device", where it computed
    # them, or "host": the logits copied to host memory once per batch and the answer computed
    # there. The libtorch backend copies each request's rows of each output into its answer on
    # the instance's thread; from host memory those are memcpys instead of GPU copies. "auto":
    # device. On one H100 host served 5-8 % more in one call and 3-11 % less in the next, each
    # time on a host whose own speed had moved as much (docs/gpu_serving.md, calls 16 and 17).
    # On the CPU both are the same.
    full_model_answer: str = "auto"
    # Threads per full_model instance that send its answers (the vendored libtorch backend's
    # RESPONSE_THREADS; third_party/triton/README.md): sending one runs Triton's ensemble and HTTP
    # completion of that request on the sending thread, which is otherwise the instance's own,
    # before it takes its next batch. 0: the instance's thread, as upstream. None: 0; on one H100
    # two threads served as many single texts and batches as none (docs/gpu_serving.md, call 17).
    full_model_response_threads: int | None = None
    # How tritonserver's threads wait for the GPU (the vendored libtorch backend's GPU_WAIT, set
    # on full_model; it holds for the whole process): "spin", "yield", "block", or "auto", CUDA's
    # choice, which spins on a host with more cores than CUDA contexts, so a thread waiting for a
    # batch (the model reads the experts' token counts on the host, the backend synchronises its
    # stream) keeps a core the host's other stages may want. "auto": on one H100 "block" served
    # 23 % fewer single texts and 16 % fewer batches of 32 (docs/gpu_serving.md, call 17).
    gpu_wait: str = "auto"
    # Executions of v2's model of at most this many texts replay CUDA graphs (the vendored libtorch
    # backend's CUDA_GRAPH_MAX_BATCH; third_party/triton/README.md): one launch for the whole
    # forward, which otherwise launches each of its kernels from the TorchScript interpreter and
    # reads the experts' token counts on the host. Graphed batches run FullModel.device_answer:
    # every padded position as a token and every expert on every token, so larger batches keep the
    # eager forward. 0: never. None: 128 on a GPU (at most full_model's largest batch), 0 on the
    # CPU. On one H100 against off, the same host (docs/gpu_serving.md, call 26): single texts at
    # C=1 in 1.61 ms at the median (off 5.66), 10,135 texts/s within p99 50 ms (off 8,676), batches
    # of 32 kept (106,719 texts/s, off 103,865). The cost: past saturation (C=192) its single-text
    # p99 was 78-140 ms where off kept 42-47 (calls 25-26), while serving more. Up to 64 texts
    # served fewer single texts at C=192 (calls 23-25); up to 256 cost batches of 32 a quarter of
    # their rate.
    full_model_cuda_graphs: int | None = None
    # How a graphed batch reaches its experts: "dense", every expert on every padded position
    # (MoEFeedForward.forward_dense), or "blocked", each position on its top-k experts in blocks of
    # one expert each (MoEFeedForward.forward_blocked: about k/E of the experts' FLOPs, the same
    # answer to float rounding), which would let graphs cover large batches too. "auto": dense,
    # the one measured on a GPU so far.
    full_model_graph_experts: str = "auto"
    # Test texts that check: None, all 7,600; fewer for a quick look (the manifest says how many).
    precision_check_texts: int | None = None
    # v1 runs each batch as this many length-sorted groups through the attention pieces at once,
    # with as many instances of the attention and gating models: 2 on the CPU (both cores busy,
    # and less padding), 1 on a GPU. None: by device.
    v1_groups: int | None = None
    # How the BLS reaches a layer's experts: "ensemble" (the `experts` ensemble, one request) or
    # "calls" (one request per busy expert); "auto" is the ensemble. expert_calls() says why.
    expert_fanout: str = "auto"
    # Host-side stages, sized for `host_cores` (None: this machine's) by export/host_sizing.py;
    # each one given here overrides its share.
    host_cores: int | None = None
    tokenizer_instances: int | None = None
    tokenizer_threads: int | None = None
    postprocessing_instances: int | None = None
    bls_instances: int | None = None
    bls_max_batch: int | None = None
    full_model_max_batch: int | None = None
    http_threads: int | None = None  # read by `moe serve` from the manifest; 0: Triton's default

    def resolved(self) -> ExportOptions:
        on_cpu = self.device == "cpu"
        cores = self.host_cores or host_cores()
        stages = size_host_stages(self.device, cores, self.max_batch_size)

        def pick(name: str) -> int:
            value = getattr(self, name)
            return getattr(stages, name) if value is None else value

        return replace(
            self,
            host_cores=cores,
            tokenizer_instances=pick("tokenizer_instances"),
            tokenizer_threads=pick("tokenizer_threads"),
            postprocessing_instances=pick("postprocessing_instances"),
            bls_instances=pick("bls_instances"),
            bls_max_batch=pick("bls_max_batch"),
            full_model_max_batch=pick("full_model_max_batch"),
            full_model_instances=pick("full_model_instances"),
            http_threads=pick("http_threads"),
            length_group=self.length_group if self.length_group is not None else (16 if on_cpu else 0),
            v1_groups=self.v1_groups or (2 if on_cpu else 1),
            expert_fanout=self.expert_fanout if self.expert_fanout != "auto" else "ensemble",
            full_model_answer=self.full_model_answer if self.full_model_answer != "auto" else "device",
            full_model_response_threads=self.full_model_response_threads or 0,
            full_model_graph_experts="dense"
            if self.full_model_graph_experts == "auto"
            else self.full_model_graph_experts,
            full_model_cuda_graphs=(
                self.full_model_cuda_graphs
                if self.full_model_cuda_graphs is not None
                else 0
                if on_cpu
                else min(GPU_CUDA_GRAPHS, pick("full_model_max_batch"))
            ),
        )


def bls_on_gpu(opts: ExportOptions) -> bool:
    return opts.device == "cuda" and opts.bls_device == "auto"


def expert_calls(opts: ExportOptions, n_experts: int, ensemble_experts: int) -> str:
    """How the BLS reaches a layer's experts, written into its config (it only reads it):

    "ensemble": one request to the `experts` ensemble, which runs every expert concurrently
        inside the server, an idle expert on its empty chunk (an execution that computes
        nothing, about 45 us of server time, against the 0.5-1 ms a round trip of its own costs
        the BLS). On the CPU it measured lower latency at concurrency 1 and less BLS CPU per text
        under load (docs/benchmarks.md), on one and two H200s more v1 throughput under load.
    "ensemble_if_all_busy": the same for layers whose experts all have tokens, one request per
        busy expert otherwise. A BLS on a GPU gets this: an empty GPU tensor in the ensemble's
        answer crashes tritonserver 2.51 (in its Python backend, receiving the answer; seen on
        an H200).
    "calls": one request per busy expert, all in flight at once, idle experts not called
        (--expert-fanout calls), and for a model whose number of experts is not the
        `ensemble_experts` that the experts ensemble's file has steps for. Remote experts are
        always called so: the ensemble runs local experts only.
    """
    if opts.expert_fanout == "calls" or n_experts != ensemble_experts:
        return "calls"
    return "ensemble_if_all_busy" if bls_on_gpu(opts) else "ensemble"
