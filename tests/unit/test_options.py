"""What needs no server: expert ranges, client options, how the client names server errors."""

import dataclasses

import pytest
from tritonclient.utils import InferenceServerException

from moe.errors import MoEError
from moe_client import (
    AccessDenied,
    InvalidInput,
    ModelNotReady,
    MoEClient,
    MoEClientError,
    RequestTimeout,
    ServerBusy,
    ServerUnreachable,
)
from moe_client._core import map_error
from serving.commands.serve import parse_expert_range


def test_expert_ranges():
    assert parse_expert_range("0-3") == [0, 1, 2, 3]
    assert parse_expert_range("4-5,1") == [1, 4, 5]
    with pytest.raises(MoEError):
        parse_expert_range("6-9")
    with pytest.raises(MoEError):
        parse_expert_range("x")


def test_bad_options():
    with pytest.raises(ValueError, match="protocol"):
        MoEClient(protocol="ftp")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        MoEClient().classify(["ok", 3])


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        ("400", "TEXT[1] is empty or whitespace only", InvalidInput),
        ("StatusCode.INVALID_ARGUMENT", "TEXT[0] is not valid UTF-8", InvalidInput),
        ("403", "This API is restricted, expecting header 'moe-admin-key'", AccessDenied),
        # Triton 2.51 refuses a restricted gRPC call with UNAVAILABLE.
        ("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header 'x'", AccessDenied),
        ("404", "Request for unknown model: 'moe_v3' is not found", ModelNotReady),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'moe_v1' has no available versions", ModelNotReady),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", RequestTimeout),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServerUnreachable),
        ("StatusCode.UNAVAILABLE", "in ensemble 'moe_v1', Exceeds maximum queue size", ServerBusy),
        ("StatusCode.UNAVAILABLE", "in ensemble 'moe_v1', Request timeout expired", ServerBusy),
        ("500", "moe_bls: something broke", MoEClientError),
    ],
)
def test_server_errors_are_named_by_their_status(status, message, kind):
    error = map_error(InferenceServerException(message, status=status), "grpc server at h:1", offset=64)
    assert type(error) is kind and message in str(error)
    if kind is InvalidInput:
        assert "texts[64 + i]" in str(error) and error.server_message == message


def test_bugs_are_not_named_server_errors():
    assert map_error(KeyError("x"), "somewhere") is None


def test_the_cuda_pool_is_sized_for_the_bls_of_a_gpu_export(tmp_path):
    """Python models pass GPU tensors through Triton's CUDA pool: a GPU export gets one sized
    for its BLS on every GPU, a CPU export Triton's default, and --cuda-memory-pool-mb wins."""
    import json

    from serving.server import BLS_POOL_TENSORS, ServerOptions, TritonServer

    def pool_args(device: str, **options) -> list[str]:
        (tmp_path / "model_repository").mkdir(exist_ok=True)
        manifest = dict(
            options=dict(device=device, gpus=2, bls_instances=4, bls_max_batch=256),
            config=dict(max_len=128, d_model=384),
        )
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        return TritonServer(ServerOptions(repository=tmp_path, **options)).cuda_pool_args()

    mb = -(-4 * BLS_POOL_TENSORS * 256 * 128 * 384 * 4 // 2**20)
    assert mb > 64
    assert pool_args("cuda") == [f"--cuda-memory-pool-byte-size={g}:{mb * 2**20}" for g in (0, 1)]
    assert pool_args("cpu") == []
    assert pool_args("cuda", cuda_memory_pool_mb=100) == [
        f"--cuda-memory-pool-byte-size={g}:{100 * 2**20}" for g in (0, 1)
    ]


def test_http_threads_are_the_exports_unless_asked(tmp_path):
    """tritonserver gets the HTTP threads the export sized for its host (a GPU export: twice the
    cores), --http-threads wins, and a CPU export or one without a manifest keeps Triton's."""
    import json

    from export.options import ExportOptions
    from serving.server import ServerOptions, TritonServer

    (tmp_path / "model_repository").mkdir()

    def command(device: str | None, **options) -> list[str]:
        manifest = tmp_path / "manifest.json"
        manifest.unlink(missing_ok=True)
        if device is not None:
            resolved = ExportOptions(device=device, host_cores=16).resolved()
            exported = dataclasses.asdict(resolved)
            manifest.write_text(json.dumps(dict(options=exported, config=dict(max_len=128, d_model=384)), default=str))
        opts = ServerOptions(repository=tmp_path, tritonserver=tmp_path / "tritonserver", backend_directory=tmp_path)
        return TritonServer(dataclasses.replace(opts, **options)).command()

    def http_args(args: list[str]) -> list[str]:
        return [arg for arg in args if arg.startswith("--http-thread-count")]

    assert http_args(command("cuda")) == ["--http-thread-count=32"]
    assert http_args(command("cuda", http_threads=8)) == ["--http-thread-count=8"]
    assert http_args(command("cpu")) == []
    assert http_args(command(None)) == []
    assert http_args(command(None, http_threads=16)) == ["--http-thread-count=16"]


def test_gpu_host_stages_grow_with_the_cores():
    """On a GPU host full_model gets 3/8 of the cores per GPU (at least 2) and the BLS 5/16 (at
    least 1): 6 and 5 on the 16 cores where they were measured, the BLS with batches of up to 512
    texts; the CPU keeps its fixed layout."""
    from export.host_sizing import size_host_stages

    sixteen = size_host_stages("cuda", 16, 64)
    assert (sixteen.full_model_instances, sixteen.bls_instances, sixteen.tokenizer_instances) == (6, 5, 12)
    assert (sixteen.bls_max_batch, sixteen.full_model_max_batch) == (512, 256)
    two = size_host_stages("cuda", 2, 64)
    assert (two.full_model_instances, two.bls_instances) == (2, 1)
    assert size_host_stages("cuda", 32, 64).full_model_instances == 12
    cpu = size_host_stages("cpu", 16, 64)
    assert (cpu.full_model_instances, cpu.bls_instances) == (2, 1)
