"""deploy/k8s/: every overlay renders and validates offline, and the manifests agree with the app.

Rendering needs ``kubectl`` (its built-in kustomize): without it these tests
fail with a message saying so, they never skip. Validation is
``kubernetes-validate --strict`` (the dev extras; it ships the Kubernetes
schemas), and for the ServiceMonitor a JSON schema transcribed from the
prometheus-operator CRD (tests/support/schemas/).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from app.config import Settings, deprecated_settings
from app.http.app import create_app
from tests.support.server import (
    REPO_ROOT,
    VENV_BIN,
    child_processes,
    clean_env,
    drop_postgres_database,
    free_port,
    fresh_postgres_database,
    stop,
    worker_name,
)

K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = ("production", "dev")
SCHEMA = (
    REPO_ROOT / "tests" / "support" / "schemas" / "servicemonitor.monitoring.coreos.com.v1.json"
)
# The oldest Kubernetes the manifests are for (topologySpreadConstraints.matchLabelKeys: 1.27+),
# and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29.0", None)
# Environment variables the app reads that are not Settings fields (bso serve's metrics folder).
OTHER_ENV = {"PROMETHEUS_MULTIPROC_DIR"}
# PostgreSQL's default max_connections, less a few for the superuser and migrations.
POSTGRES_CONNECTIONS = 100 - 10


# ---------------------------------------------------------------- rendering


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl is not installed: the Kubernetes manifests cannot be rendered "
            "(install kubectl >= 1.27, which has kustomize built in)"
        )
    return found


def kustomize(directory: Path, *options: str) -> str:
    done = subprocess.run(
        [kubectl(), "kustomize", *options, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return done.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(overlay: str) -> list[dict[str, Any]]:
    return documents(kustomize(K8S / "overlays" / overlay))


def with_servicemonitor(tmp_path: Path, overlay: str) -> list[dict[str, Any]]:
    """The overlay with the ServiceMonitor component uncommented, as its comment says.

    Rendered from a copy in tmp_path whose paths point back at the overlay's.
    """
    source = K8S / "overlays" / overlay
    text = (source / "kustomization.yaml").read_text()
    assert "# components:\n#   - ../../components/servicemonitor\n" in text
    text = text.replace("# components:\n#   - ", "components:\n  - ")
    kustomization = yaml.safe_load(text)
    folder = tmp_path / f"{overlay}-monitored"
    folder.mkdir()
    for key in ("resources", "components"):
        kustomization[key] = [os.path.relpath(source / p, folder) for p in kustomization[key]]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    # Its files (namespace.yaml) are outside the copy's folder: lift kustomize's restriction.
    return documents(kustomize(folder, "--load-restrictor", "LoadRestrictionsNone"))


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def bso_containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The container of the Deployment and of the migration Job."""
    return {
        kind: one(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]
        for kind, name in (("Deployment", "bso"), ("Job", "bso-migrate"))
    }


def validate(text: str, version: str | None) -> subprocess.CompletedProcess[str]:
    exe = VENV_BIN / "kubernetes-validate"
    assert exe.exists(), "kubernetes-validate is missing: pip install -e '.[dev]'"
    args = [str(exe), "--strict", "--quiet"]
    if version:
        args += ["--kubernetes-version", version]
    return subprocess.run([*args, "-"], input=text, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------- validation


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=["oldest", "newest"])
def test_the_overlay_renders_and_passes_strict_validation(
    overlay: str, version: str | None
) -> None:
    text = kustomize(K8S / "overlays" / overlay)
    done = validate(text, version)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {d["kind"] for d in documents(text)}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "Job",
        "ServiceAccount",
        "Namespace",
    } <= kinds


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The check can fail: one unknown field in the Deployment is an error."""
    docs = render("production")
    deployment = one(docs, "Deployment", "bso")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"x": 1}
    done = validate(yaml.safe_dump_all(docs), None)
    assert done.returncode != 0
    assert "readinesProbe" in done.stdout + done.stderr


def test_the_dev_overlay_runs_its_own_postgres_and_production_does_not() -> None:
    dev, production = render("dev"), render("production")
    postgres = one(dev, "StatefulSet", "bso-postgres")
    assert postgres["spec"]["replicas"] == 1
    (claim,) = postgres["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    secrets = {  # generated, with a hash suffix
        d["metadata"]["name"].rsplit("-", 1)[0]: d for d in dev if d["kind"] == "Secret"
    }
    ref = bso_containers(dev)["Deployment"]["env"][0]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secrets["bso-database"]["metadata"]["name"]
    # bso's URL names the dev PostgreSQL's Service, port, user, password and database.
    url = make_url(base64.b64decode(secrets["bso-database"]["data"][ref["key"]]).decode())
    postgres_env = {
        k: base64.b64decode(v).decode() for k, v in secrets["bso-postgres"]["data"].items()
    }
    service = one(dev, "Service", "bso-postgres")
    assert (url.host, url.port) == (
        service["metadata"]["name"],
        service["spec"]["ports"][0]["port"],
    )
    assert (url.username, url.password, url.database) == (
        postgres_env["POSTGRES_USER"],
        postgres_env["POSTGRES_PASSWORD"],
        postgres_env["POSTGRES_DB"],
    )
    assert Settings(database_url=url.render_as_string(hide_password=False)).database_url
    assert not [d for d in production if d["kind"] in ("StatefulSet", "Secret")]
    prod_ref = bso_containers(production)["Deployment"]["env"][0]["valueFrom"]["secretKeyRef"]
    assert prod_ref == {"name": "bso-database", "key": "url"}  # created by the operator


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_migration_step_applies_what_the_job_needs(overlay: str) -> None:
    """docs/kubernetes.md applies `-l bso.deploy/phase=migrate` first: the Job and what it uses."""
    docs = render(overlay)
    chosen = [
        d for d in docs if d["metadata"].get("labels", {}).get("bso.deploy/phase") == "migrate"
    ]
    names = {(d["kind"], d["metadata"]["name"]) for d in chosen}
    pod = one(docs, "Job", "bso-migrate")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    needed = {("Job", "bso-migrate"), ("ServiceAccount", pod["serviceAccountName"])}
    needed |= {("ConfigMap", s["configMapRef"]["name"]) for s in container["envFrom"]}
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]}
    rendered = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    needed |= {("Secret", name) for name in secrets & rendered}  # production's: made by hand
    assert names == needed
    if overlay == "production":
        assert secrets == {"bso-database"} and not rendered


def test_the_servicemonitor_matches_its_crd_schema_and_the_service(tmp_path: Path) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    docs = with_servicemonitor(tmp_path, "production")
    monitor = one(docs, "ServiceMonitor", "bso")
    errors = [e.message for e in validator.iter_errors(monitor)]
    assert not errors, errors
    # The schema can fail: a misspelt field and a bad duration are errors.
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["intervall"] = "30s"
    broken["spec"]["endpoints"][0]["scrapeTimeout"] = "ten seconds"
    assert len(list(validator.iter_errors(broken))) == 2
    # It scrapes the Service's port by name, at /metrics, with a token from a Secret.
    service = one(docs, "Service", "bso")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert endpoint["authorization"]["credentials"] == {"name": "bso-metrics-token", "key": "token"}
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    # The rest of the overlay still validates with the component in.
    others = [d for d in docs if d["kind"] != "ServiceMonitor"]
    done = validate(yaml.safe_dump_all(others), None)
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------- agreement with the app


def settings_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """What the bso containers get from the settings ConfigMap."""
    (config,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("bso-settings")
    ]
    return {key: str(value) for key, value in config["data"].items()}


def known_env_names() -> set[str]:
    """Every environment name a setting of app/config.py answers to."""
    names = set()
    for field_name, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        if choices:
            names |= {c for c in choices if isinstance(c, str) and c.isupper()}
        else:
            names.add(f"BSO_{field_name.upper()}")
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_environment_variable_is_a_known_setting(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(overlay)
    env = settings_env(docs)
    for container in bso_containers(docs).values():
        assert {s["configMapRef"]["name"] for s in container["envFrom"]} == {
            next(d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap")
        }
        env.update({item["name"]: "set" for item in container.get("env", [])})
    known = known_env_names()
    sources = [path.read_text() for path in (REPO_ROOT / "app").rglob("*.py")]
    for name in OTHER_ENV:
        assert any(f'environ.get("{name}")' in text for text in sources), f"app/ never reads {name}"
    unknown = set(env) - known - OTHER_ENV
    assert not unknown, f"not settings of app/config.py: {sorted(unknown)}"
    assert not deprecated_settings(env)
    # And the values are valid settings, as deployed.
    for name in os.environ:
        if name.startswith(("BSO_", "ZEUS_BSO_")):
            monkeypatch.delenv(name)
    for name, value in settings_env(docs).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BSO_DATABASE_URL", "postgresql://bso:secret@db:5432/bso")
    settings = Settings()
    assert settings.auth == "required"
    assert settings.workers >= 2
    assert not settings.is_sqlite


def test_the_probes_use_paths_the_app_serves() -> None:
    deployment = one(render("production"), "Deployment", "bso")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    paths = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:")).openapi()["paths"]
    served = {path for path, operations in paths.items() if "get" in operations}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {
        k: container[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["path"] in served
        assert probe["port"] in ports
    assert ports["http"] == int(command_option(container["command"], "--port"))


def dockerfile() -> str:
    return (REPO_ROOT / "Dockerfile").read_text()


def dockerfile_cmd() -> list[str]:
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile(), flags=re.MULTILINE)
    return list(json.loads(cmd))


def dockerfile_runtime_env() -> dict[str, str]:
    """The ENV of the final stage (PATH left out: it points at the image's venv)."""
    runtime = dockerfile().split(" AS runtime", 1)[1].replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                if key != "PATH":
                    env[key] = value
    return env


def command_option(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


def test_the_containers_run_the_images_command_as_its_user() -> None:
    docs = render("production")
    containers = bso_containers(docs)
    assert containers["Deployment"]["command"] == dockerfile_cmd()
    assert containers["Job"]["command"] == ["bso", "migrate"]
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile(), flags=re.MULTILINE)
    for kind in ("Deployment", "Job"):
        pod = one(docs, kind)["spec"]["template"]["spec"]
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
            int(user[0]),
            int(user[1]),
        )
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        security = pod["containers"][0]["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}


def test_the_grace_period_outlasts_the_longest_request() -> None:
    docs = render("production")
    env = settings_env(docs)
    pod = one(docs, "Deployment", "bso")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    settings = Settings(
        database_url="postgresql://x@db/x",
        request_timeout_s=float(env["BSO_REQUEST_TIMEOUT_S"]),
        lock_timeout_ms=int(env["BSO_LOCK_TIMEOUT_MS"]),
    )
    longest = settings.request_timeout_s + settings.lock_timeout_ms / 1000
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + longest


def test_the_replicas_fit_postgres_connections_and_survive_a_drain() -> None:
    docs = render("production")
    env = settings_env(docs)
    hpa = one(docs, "HorizontalPodAutoscaler", "bso")
    deployment = one(docs, "Deployment", "bso")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert deployment["spec"]["replicas"] >= 2
    connections = hpa["spec"]["maxReplicas"] * int(env["BSO_WORKERS"]) * int(env["BSO_POOL_SIZE"])
    assert connections <= POSTGRES_CONNECTIONS
    pdb = one(docs, "PodDisruptionBudget", "bso")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {s["topologyKey"] for s in spread}
    service = one(docs, "Service", "bso")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def writable_mounts(container: dict[str, Any], pod: dict[str, Any]) -> set[str]:
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = container["volumeMounts"]
    assert {m["name"] for m in mounts} <= empty_dirs
    return {m["mountPath"] for m in mounts if not m.get("readOnly")}


# ------------------------------------------------- the command, run for real

WRITE_CALLS = "open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir"
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")


def strace() -> str:
    found = shutil.which("strace")
    if found is None:
        pytest.fail("strace is not installed: apt-get install strace (scripts/lib.sh does)")
    return found


def written_paths(trace: Path) -> set[str]:
    """Paths a traced process tree created, wrote, renamed or removed (tried, or did)."""
    paths = set()
    for line in trace.read_text(errors="replace").splitlines():
        call = re.search(r"\b(\w+)\((.*)", line)
        if call is None:
            continue
        name, rest = call.groups()
        quoted = re.findall(r'"((?:[^"\\]|\\.)*)"', rest)
        if not quoted:
            continue
        if name in ("open", "openat", "creat"):
            if name == "creat" or any(flag in rest for flag in WRITE_FLAGS):
                paths.add(quoted[0])
        elif name in WRITE_CALLS.split(","):
            paths.update(quoted)
    return paths


def outside(paths: set[str], cwd: Path, allowed: list[Path]) -> set[str]:
    """The paths not under an allowed folder (relative ones are under cwd)."""
    bad = set()
    for path in paths:
        resolved = Path(path) if path.startswith("/") else cwd / path
        if path.startswith("/dev/"):  # /dev/null, /dev/shm: the runtime provides them
            continue
        if not any(resolved == a or a in resolved.parents for a in allowed):
            bad.add(path)
    return bad


@pytest.fixture
def postgres_database() -> Iterator[str]:
    name = f"bso_test_k8s_{worker_name()}_{int(time.time() * 1000) % 10**8}"
    url = fresh_postgres_database(name)  # empty: the Job's command migrates it
    yield url
    drop_postgres_database(name)


def traced(tmp_path: Path, label: str, command: list[str]) -> tuple[list[str], Path]:
    trace = tmp_path / f"{label}.strace"
    exe = VENV_BIN / command[0]  # the image's PATH starts with its venv's bin
    # --seccomp-bpf: only the traced calls stop the process (much less overhead).
    options = ["-f", "--seccomp-bpf", "-qq", "-e", f"trace={WRITE_CALLS}", "-o", str(trace)]
    return [strace(), *options, str(exe), *command[1:]], trace


def test_the_containers_commands_run_here_and_write_only_their_mounts(
    tmp_path: Path, postgres_database: str
) -> None:
    """The Job's and the Deployment's commands, with the image's and the ConfigMap's
    environment, on a fresh PostgreSQL database: the Job migrates it, the server
    becomes ready, serves a training job and its metrics, and stops on SIGTERM.
    Every path either process tree writes is in one of its container's writable
    mounts (stand-ins here under tmp_path), the root filesystem being read-only.
    Only the port differs from the manifest (a free one: this machine is shared).
    """
    docs = render("production")
    containers = bso_containers(docs)
    pods = {kind: one(docs, kind)["spec"]["template"]["spec"] for kind in containers}
    app_dir = tmp_path / "app"  # the image's WORKDIR, read-only in the pod
    app_dir.mkdir()
    root = tmp_path / "root"  # stand-ins for the mounts: <root>/run/bso-metrics, <root>/tmp
    env = clean_env(**dockerfile_runtime_env(), **settings_env(docs))
    env["BSO_DATABASE_URL"] = postgres_database
    mounts = {kind: writable_mounts(containers[kind], pods[kind]) for kind in containers}
    assert mounts["Deployment"] == {env["PROMETHEUS_MULTIPROC_DIR"], "/tmp"}
    assert mounts["Job"] == {"/tmp"}

    def stand_in(path: str) -> Path:
        return root / path.lstrip("/")

    env["PROMETHEUS_MULTIPROC_DIR"] = str(stand_in(env["PROMETHEUS_MULTIPROC_DIR"]))
    env["TMPDIR"] = str(stand_in("/tmp"))
    for kind in mounts:
        for path in mounts[kind]:
            stand_in(path).mkdir(parents=True, exist_ok=True)

    # The migration Job.
    argv, job_trace = traced(tmp_path, "migrate", containers["Job"]["command"])
    done = subprocess.run(argv, cwd=app_dir, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = outside(written_paths(job_trace), app_dir, [stand_in(p) for p in mounts["Job"]])
    assert not bad, f"bso migrate wrote outside its mounts: {sorted(bad)}"

    # A trainer and a viewer token, made as docs/kubernetes.md says: `kubectl exec`
    # into a server pod (its environment and mounts) and `bso tokens create`.
    tokens = {}
    for role in ("trainer", "viewer"):
        create = ["bso", "tokens", "create", role, "--role", role]
        argv, trace = traced(tmp_path, f"tokens-{role}", create)
        made = subprocess.run(
            argv, cwd=app_dir, env=env, capture_output=True, text=True, timeout=180
        )
        assert made.returncode == 0, made.stdout + made.stderr
        tokens[role] = made.stdout.splitlines()[-1]
        bad = outside(written_paths(trace), app_dir, [stand_in(p) for p in mounts["Deployment"]])
        assert not bad, f"bso tokens create wrote outside the server's mounts: {sorted(bad)}"

    # The server, with the manifest's arguments but a free port.
    command = list(containers["Deployment"]["command"])
    port = free_port()
    command[command.index("--port") + 1] = str(port)
    argv, server_trace = traced(tmp_path, "serve", command)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=app_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = httpx.get(base + "/readyz", timeout=5)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        assert ready is not None and ready.status_code == 200, log.read_text()[-3000:]
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200
        trainer = {"authorization": f"Bearer {tokens['trainer']}"}
        job = {
            "job_id": "k8s-check",
            "job_id_prefix": "k8s",
            "batch_sizes": [32, 64],
            "default_batch_size": 32,
            "eta_knob": 0.5,
            "beta_knob": 2.0,
            "target_metric": 0.5,
            "higher_is_better_metric": True,
            "max_epochs": 5,
            "num_pruning_rounds": 2,
            "window_size": 0,
            "mab_prior_mean": 0.0,
            "mab_prior_precision": 0.0,
            "mab_num_explorations": 2,
            "mab_seed": 1,
            "max_power": 300.0,
            "number_of_gpus": 1,
            "gpu_model": "A40",
        }
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.post("/jobs", json=job).status_code == 401  # BSO_AUTH=required
            assert http.post("/jobs", json=job, headers=trainer).status_code == 201
            trial = http.get("/jobs/batch_size", params={"job_id": "k8s-check"}, headers=trainer)
            assert trial.status_code == 200, trial.text
            viewer = {"authorization": f"Bearer {tokens['viewer']}"}
            scraped = http.get("/metrics", headers=viewer)
            assert scraped.status_code == 200
            assert 'bso_trials_dispatched_total{type="Exploration"} 1.0' in scraped.text
    finally:
        # SIGTERM to bso serve, the container's main process, as the kubelet sends it
        # (strace blocks fatal signals when it runs a command with -o: not to strace).
        served = [
            pid for pid, cmdline in child_processes(process.pid).items() if "serve" in cmdline
        ]
        for pid in served or [process.pid]:
            os.kill(pid, signal.SIGTERM)
        try:
            exit_status: int | None = process.wait(90)
        except subprocess.TimeoutExpired:
            stop(process)
            exit_status = None  # a hang: killed, and failed below
    # docs/upgrades.md: status 0 with several workers (the ConfigMap's BSO_WORKERS=2);
    # strace exits with its tracee's status.
    assert int(env["BSO_WORKERS"]) > 1 and len(served) == 1, served
    assert exit_status == 0, f"bso serve after SIGTERM: {exit_status}\n{log.read_text()[-3000:]}"
    metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    assert list(metrics_dir.glob("*.db")), "the workers wrote no metrics files in their mount"
    written = written_paths(server_trace)
    assert any(str(metrics_dir) in p for p in written)
    bad = outside(written, app_dir, [stand_in(p) for p in mounts["Deployment"]])
    assert not bad, f"bso serve wrote outside its mounts: {sorted(bad)}"
    assert not list(app_dir.iterdir()), "something was written in the read-only WORKDIR"


def test_the_image_environment_is_what_the_manifests_assume() -> None:
    """BSO_HOST/BSO_PORT come from the image; the command repeats them."""
    env = dockerfile_runtime_env()
    command = dockerfile_cmd()
    assert env["BSO_PORT"] == command_option(command, "--port")
    assert env["BSO_HOST"] == command_option(command, "--host")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # nothing written next to the code


# ------------------------------------------------ what docs/kubernetes.md promises


def pod_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template (Deployment, Job, StatefulSet...): ``Kind/name`` -> its pod spec."""
    found = {}
    for doc in docs:
        spec = doc.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get(
            "template"
        )
        if isinstance(template, dict) and "containers" in template.get("spec", {}):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = template["spec"]
    return found


# The volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What breaks the ``restricted`` Pod Security Standard (Kubernetes 1.29), as the
    admission controller checks it: baseline's rules and restricted's."""
    problems = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{key}: true")
    pod_context = pod.get("securityContext", {})
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    if pod_context.get("runAsUser") == 0:
        problems.append("pod runAsUser: 0")
    for name, value in (pod_context.get("sysctls") or {}).items():
        problems.append(f"sysctl {name}={value}")
    containers = pod["containers"] + pod.get("initContainers", [])
    for container in containers:
        where = f"container {container['name']}"
        context = container.get("securityContext", {})
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if context.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser: 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile {seccomp or 'unset'}")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities {capabilities['add']}")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']}")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount {context['procMount']}")
    return problems


def test_the_restricted_check_sees_what_the_standard_forbids() -> None:
    """The check above is not vacuous: each change breaks a rule it names."""
    pod = one(render("dev"), "StatefulSet", "bso-postgres")["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    breakages: dict[str, Callable[[dict[str, Any]], object]] = {
        "allowPrivilegeEscalation": lambda p: p["containers"][0]["securityContext"].pop(
            "allowPrivilegeEscalation"
        ),
        "runAsNonRoot": lambda p: (
            p["securityContext"].pop("runAsNonRoot"),
            p["containers"][0]["securityContext"].pop("runAsNonRoot"),
        ),
        "seccompProfile": lambda p: p["securityContext"].pop("seccompProfile"),
        "drop ALL": lambda p: p["containers"][0]["securityContext"].pop("capabilities"),
        "hostPath": lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostNetwork": lambda p: p.update(hostNetwork=True),
    }
    for name, breakage in breakages.items():
        broken = copy.deepcopy(pod)
        breakage(broken)
        assert restricted_violations(broken), f"{name} removed, yet no violation found"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_template_meets_the_restricted_pod_security_standard(overlay: str) -> None:
    docs = render(overlay)
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    templates = pod_templates(docs)
    expected = {"Deployment/bso", "Job/bso-migrate"}
    if overlay == "dev":
        expected.add("StatefulSet/bso-postgres")  # the dev PostgreSQL is held to it too
    assert set(templates) == expected
    problems = {name: restricted_violations(pod) for name, pod in templates.items()}
    assert problems == {name: [] for name in templates}


def port_number(port: int | str, pod: dict[str, Any]) -> int:
    """A NetworkPolicy port: a number, or a container port's name in the selected pods."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])
             if p.get("name") == port]  # fmt: skip
    assert len(named) == 1, f"port {port!r} names {named}"
    return int(named[0])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # matchExpressions: not used here
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_network_policy_lets_in_http_only_and_out_dns_and_postgres_only(
    overlay: str,
) -> None:
    docs = render(overlay)
    policy = one(docs, "NetworkPolicy", "bso")["spec"]
    server = one(docs, "Deployment", "bso")["spec"]["template"]
    migrate = one(docs, "Job", "bso-migrate")["spec"]["template"]
    for pod in (server, migrate):  # both bso pods are under it
        assert selects(policy["podSelector"], pod["metadata"]["labels"])
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]  # both directions closed
    ingress = [
        (rule.get("from"), port_number(p["port"], server["spec"]), p.get("protocol", "TCP"))
        for rule in policy["ingress"]
        for p in rule["ports"]
    ]
    assert ingress == [([{"namespaceSelector": {}}], 8000, "TCP")]
    for rule in policy["egress"]:
        assert rule.get("ports"), f"an egress rule without ports lets out every port: {rule}"
    egress = {
        (p["port"], p.get("protocol", "TCP")) for rule in policy["egress"] for p in rule["ports"]
    }
    assert egress == {(53, "UDP"), (53, "TCP"), (5432, "TCP")}
    # The server listens where the policy lets in.
    command = server["spec"]["containers"][0]["command"]
    assert command_option(command, "--port") == "8000"


def test_a_rollout_adds_a_pod_before_it_removes_one() -> None:
    deployment = one(render("production"), "Deployment", "bso")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_the_startup_probe_waits_ten_minutes_for_the_migration() -> None:
    """docs/kubernetes.md: a pod that starts before the migration Job gets 10 minutes."""
    docs = render("production")
    container = one(docs, "Deployment", "bso")["spec"]["template"]["spec"]["containers"][0]
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"
    budget = (
        startup.get("initialDelaySeconds", 0)
        + startup["periodSeconds"] * startup["failureThreshold"]
    )
    assert budget >= 600, budget
