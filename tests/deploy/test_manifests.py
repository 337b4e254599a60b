"""deploy/kubernetes: every manifest validates against the Kubernetes schemas (offline,
kubernetes-validate), the kustomization renders (`kubectl kustomize`), and the pieces fit:
command lines ftctl accepts, mounts under the paths they use, a probe that really answers."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml
from deploy_helpers import DEPLOY, parse_ftctl

from tunefleet.coordinator import start_server
from tunefleet.coordinator.auth import TokensFileError, TokenTable

KUSTOMIZE = DEPLOY / "kubernetes"

try:
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    K8S_VERSION = latest_version()
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "probe"}}, K8S_VERSION
    )
except Exception as exc:  # not installed, or its bundled schemas cannot be loaded offline
    kubernetes_validate = None
    _WHY = f"kubernetes-validate unusable offline: {exc!r}"
else:
    _WHY = ""


def _file_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(KUSTOMIZE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    """`kubectl kustomize deploy/kubernetes`, or the files themselves without kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: cannot render the kustomization")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _find(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    files = {p.name for p in KUSTOMIZE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.skipif(kubernetes_validate is None, reason=_WHY)
@pytest.mark.parametrize(
    "doc",
    [pytest.param(doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}") for name, doc in _file_documents()],
)  # fmt: skip
def test_each_manifest_file_is_valid_kubernetes(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.skipif(kubernetes_validate is None, reason=_WHY)
def test_rendered_kustomization_is_valid_kubernetes(rendered):
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in rendered)
    assert kinds == [
        "ConfigMap/tunefleet-storage",
        "Deployment/tunefleet-coordinator",
        "Deployment/tunefleet-worker",
        "Namespace/tunefleet",
        "PersistentVolumeClaim/tunefleet-artifacts",
        "PersistentVolumeClaim/tunefleet-coordinator-db",
        "Secret/tunefleet-storage-credentials",
        "Secret/tunefleet-tls",
        "Secret/tunefleet-tokens",
        "Secret/tunefleet-worker-token",
        "Service/tunefleet-coordinator",
    ]
    for doc in rendered:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "tunefleet"


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _mounts(deployment: dict) -> dict[str, str]:
    """mount path -> volume name."""
    return {m["mountPath"]: m["name"] for m in _container(deployment)["volumeMounts"]}


def _under_a_mount(path: str, mounts: dict[str, str]) -> str:
    matches = [m for m in mounts if path.startswith(m.rstrip("/") + "/")]
    assert matches, f"{path} is not under any volume mount ({sorted(mounts)})"
    return mounts[max(matches, key=len)]


def test_coordinator_is_one_pod_on_its_own_database(rendered):
    coordinator = _find(rendered, "Deployment", "tunefleet-coordinator")
    spec = coordinator["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    container = _container(coordinator)
    assert container["image"] == "tunefleet-coordinator:0.1.0", "kustomize images:"
    args = parse_ftctl(["server", *container["args"]])
    assert args.tls_cert and args.tls_key and args.tokens, "TLS and tokens are on"
    assert args.listen == "0.0.0.0:50051" and not args.insecure
    assert args.metrics_port == 9464 and args.metrics_host == "0.0.0.0"

    mounts = _mounts(coordinator)
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    db_volume = volumes[_under_a_mount(args.db, mounts)]
    claim = _find(
        rendered, "PersistentVolumeClaim", db_volume["persistentVolumeClaim"]["claimName"]
    )
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert volumes[_under_a_mount(args.tls_cert, mounts)]["secret"]["secretName"] == "tunefleet-tls"
    tokens_volume = volumes[_under_a_mount(args.tokens, mounts)]["secret"]["secretName"]
    tokens_secret = _find(rendered, "Secret", tokens_volume)
    assert args.tokens.rsplit("/", 1)[1] in tokens_secret["stringData"]

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:3] == ["python", "-m", "tunefleet.coordinator.health"], probe
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert _under_a_mount(env["TUNEFLEET_TLS_CA"], mounts) == "tls"

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = _find(rendered, "Service", "tunefleet-coordinator")
    labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    assert ports == {"grpc": 50051, "metrics": 9464}


def test_workers_request_gpus_and_share_a_read_write_many_volume(rendered):
    worker = _find(rendered, "Deployment", "tunefleet-worker")
    container = _container(worker)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = parse_ftctl(["worker", *container["args"]])
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    mounts = _mounts(worker)
    artifacts = volumes[mounts[args.artifacts]]["persistentVolumeClaim"]["claimName"]
    claim = _find(rendered, "PersistentVolumeClaim", artifacts)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]

    env = {e["name"]: e for e in container["env"]}
    service = _find(rendered, "Service", "tunefleet-coordinator")
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert env["TUNEFLEET_COORDINATOR"]["value"] == f"tunefleet-coordinator:{grpc_port}"
    assert _under_a_mount(env["TUNEFLEET_TLS_CA"]["value"], mounts) == "tls"
    token_volume = volumes[_under_a_mount(env["TUNEFLEET_TOKEN_FILE"]["value"], mounts)]
    assert token_volume["secret"]["secretName"] == "tunefleet-worker-token"
    assert args.id == "$(POD_NAME)" and "POD_NAME" in env
    assert mounts["/dev/shm"] == "dshm"


def test_every_container_has_requests_limits_and_runs_as_non_root(rendered):
    for deployment in [d for d in rendered if d["kind"] == "Deployment"]:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_secret_placeholders_cannot_start_a_coordinator(rendered):
    tokens = _find(rendered, "Secret", "tunefleet-tokens")["stringData"]["tokens.yaml"]
    entries = yaml.safe_load(tokens)
    assert {e["role"] for e in entries} == {"admin", "worker"}
    with pytest.raises(TokensFileError, match="token_sha256: expected 64 hex digits"):
        TokenTable.from_text(tokens)
    tls = _find(rendered, "Secret", "tunefleet-tls")["stringData"]
    assert set(tls) == {"tls.crt", "tls.key", "ca.crt"}
    assert all("REPLACE_ME" in value for value in tls.values())


def test_the_probe_command_answers_for_a_live_coordinator(rendered, tmp_path):
    """The manifests' exec probe, run for real against a coordinator (port adjusted)."""
    command = _container(_find(rendered, "Deployment", "tunefleet-coordinator"))["readinessProbe"]
    argv = command["exec"]["command"]
    with start_server("127.0.0.1:0", tmp_path / "c.db") as server:
        argv = [sys.executable if a == "python" else a for a in argv]
        argv = [server.address if a == "localhost:50051" else a for a in argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "SERVING" in result.stdout


def test_the_readme_overlay_renders_with_real_secrets(tmp_path):
    """The production overlay shown in deploy/README.md, with stand-in secret files."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: cannot render the kustomization")
    readme = (DEPLOY / "README.md").read_text()
    block = readme.split("# overlays/prod/kustomization.yaml", 1)[1].split("```", 1)[0]
    block = block.split("\n", 1)[1]  # the rest of the comment line
    shutil.copytree(KUSTOMIZE, tmp_path / "base")
    overlay = tmp_path / "overlays" / "prod"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(block)
    for name in ("coordinator.crt", "coordinator.key", "ca.crt", "tokens.yaml", "worker.token"):
        (overlay / name).write_text(f"contents of {name}\n")
    (overlay / "storage.env").write_text("AWS_ACCESS_KEY_ID=id\nAWS_SECRET_ACCESS_KEY=key\n")
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert "REPLACE_ME" not in result.stdout
    assert _find(docs, "Secret", "tunefleet-worker-token")["data"]["token"]
    claim = _find(docs, "PersistentVolumeClaim", "tunefleet-artifacts")
    assert claim["spec"]["storageClassName"] == "nfs-client"
    worker = _find(docs, "Deployment", "tunefleet-worker")
    assert worker["spec"]["replicas"] == 8
    assert _container(worker)["image"] == "registry.example.com/tunefleet/worker:0.1.0"
    if kubernetes_validate is not None:
        for doc in docs:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_without_a_shared_file_system_the_coordinator_has_no_data_and_no_credentials(rendered):
    """Issue 15: the coordinator checks specs' schema only, so it mounts nothing but its
    database and secrets, and learns the storage URI for clients; the workers alone get the
    store's credentials, from a Secret, as environment variables."""
    coordinator = _find(rendered, "Deployment", "tunefleet-coordinator")
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in coordinator["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["tunefleet-coordinator-db"]
    container = _container(coordinator)
    storage = {e["name"]: e for e in container["env"]}["TUNEFLEET_STORAGE_URI"]
    assert storage["valueFrom"]["configMapKeyRef"]["name"] == "tunefleet-storage"
    assert "envFrom" not in container
    config = _find(rendered, "ConfigMap", "tunefleet-storage")["data"]
    assert config["TUNEFLEET_STORAGE_URI"].startswith("s3://")

    worker = _container(_find(rendered, "Deployment", "tunefleet-worker"))
    sources = {kind: ref["name"] for source in worker["envFrom"] for kind, ref in source.items()}
    assert sources["secretRef"] == "tunefleet-storage-credentials"
    assert sources["configMapRef"] == "tunefleet-storage"  # TUNEFLEET_ARTIFACTS_URI
    secret = _find(rendered, "Secret", "tunefleet-storage-credentials")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])
    args = parse_ftctl(["worker", *worker["args"]])
    assert _mounts(_find(rendered, "Deployment", "tunefleet-worker"))[args.input_cache_dir] == (
        "input-cache"
    )
