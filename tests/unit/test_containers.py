"""The deployment files: docker-compose.yml and the Kubernetes manifests are deploy/generate.py's
output (one layout, so the two cannot drift apart), the manifests are valid Kubernetes objects
(checked offline against the API's schemas), and the images are what the README says they are.
tests/integration/test_containers.py builds and runs the image."""

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def generator():
    spec = importlib.util.spec_from_file_location("deploy_generate", ROOT / "deploy" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose(*args):
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed (make setup installs Debian's package)"
    return subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_committed_files_are_the_generators_output():
    for path, text in generator().outputs().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run python deploy/generate.py"


def test_compose_file_is_valid():
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr
    result = compose("--profile", "distributed", "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"triton", "experts-a", "experts-b", "front"} <= set(services)
    assert services["experts-a"]["command"] == ["--only-experts", "0-3"]
    assert services["experts-b"]["command"] == ["--only-experts", "4-7"]
    assert services["front"]["command"][:2] == ["--experts-at", "experts-a:8001,experts-b:8001"]
    assert all(s["build"]["dockerfile"] == "docker/Dockerfile" for s in services.values())
    for name in ("triton", "front"):
        ports = services[name]["ports"]
        assert ports and all(
            str(p.get("host_ip", p) if isinstance(p, dict) else p).startswith("127.0.0.1") for p in ports
        ), ports


@pytest.mark.parametrize("name", ["experts.yaml", "front.yaml"])
def test_manifests_are_valid_kubernetes_objects(name):
    version = kubernetes_validate.latest_version()
    for doc in documents(name):
        kubernetes_validate.validate(doc, version, strict=True)  # raises with the offending field


def test_manifests_deploy_the_compose_layout():
    by_kind = {}
    for name in ("experts.yaml", "front.yaml"):
        for doc in documents(name):
            by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    compose_services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    # One Deployment and one Service per compose service of the distributed profile, the same
    # arguments, so the front reaches the experts at the same names in both.
    for service in ("experts-a", "experts-b", "front"):
        deployment = by_kind["Deployment"][f"moe-{service}"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == compose_services[service]["command"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == "8002"
        service_ports = {p["name"]: p["port"] for p in by_kind["Service"][service]["spec"]["ports"]}
        assert service_ports["grpc"] == 8001 and service_ports["metrics"] == 8002
        assert by_kind["Service"][service]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    hpa = by_kind["HorizontalPodAutoscaler"]["moe-front"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "moe-front"
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rules = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    assert any(r["name"]["as"] == metric and "nv_inference_queue_duration_us" in r["metricsQuery"] for r in rules)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == ["experts.yaml", "front.yaml"]


def test_the_image_is_the_verified_stack():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=", dockerfile, re.M) and re.search(r"^FROM \$\{BASE\}", dockerfile, re.M)
    # The venv from the distribution's python3, whose libpython the Python backend's stub embeds.
    assert "python3 -m venv" in dockerfile and "libpython$v" in dockerfile
    # Installed like a library (not editable), the libtorch backend built, the checkpoint exported.
    assert re.search(r"pip install .*--no-deps .*/tmp/src", dockerfile)
    assert "-e " not in dockerfile
    assert "python -m serving.pytorch_backend" in dockerfile and "moe export" in dockerfile


def test_ngc_variant_is_the_bundled_servers_release():
    dockerfile = (ROOT / "docker" / "Dockerfile.ngc").read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:24\.10-py3$", dockerfile, re.M)
    assert re.search(r"^RUN pip install .*/opt/moe$", dockerfile, re.M)
    assert "moe export" in dockerfile
