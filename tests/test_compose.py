"""docker/compose.yaml, .env.example and the Dockerfiles, checked as files (no Docker engine needed).

Where `docker compose` exists, it validates the file too. Otherwise the YAML is read here and
`${VAR}`, `${VAR:-default}` and `${VAR:?error}` are interpolated from .env.example as compose does.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"

AIRFLOW_SERVICES = {"airflow-init", "airflow-scheduler", "airflow-api-server", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker"}
WORKERS = {"airflow-worker", "gpu-worker"}
ONE_SHOT = {"buckets", "airflow-init"}
EXPECTED = {"postgres", "redis", "seaweedfs", "buckets", "mlflow", "gpu-worker", "prometheus", "alertmanager"} | AIRFLOW_SERVICES
CODE_ENV = {  # what the kpiguard code, boto3, DVC and MLflow read, with the stack's values
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "AWS_ENDPOINT_URL": "http://seaweedfs:8333",
    "AWS_ACCESS_KEY_ID": "change-me",
    "AWS_SECRET_ACCESS_KEY": "change-me",
    "AWS_DEFAULT_REGION": "us-east-1",
    "MLFLOW_S3_ENDPOINT_URL": "http://seaweedfs:8333",
    "KPIGUARD_WORKSPACE": "/opt/kpiguard",
    "KPIGUARD_REPORT_BUCKET": "kpiguard-reports",
    "KPIGUARD_LANDING": "s3://kpi-landing/",
}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|_KEY|_KEY_ID)$")

# $$ (a literal $), or ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\})")


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


def interpolate(value: str, env: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name, op, arg = m.group(2), m.group(3), m.group(4)
        val = env.get(name)
        if op in (":-", ":?") and not val or op in ("-", "?") and val is None:
            if op.endswith("?"):
                raise KeyError(f"{name}: {arg}")
            return arg
        return val or ""
    return VAR.sub(sub, value)


def resolved(node, env):
    if isinstance(node, dict):
        return {k: resolved(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [resolved(v, env) for v in node]
    return interpolate(node, env) if isinstance(node, str) else node


def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # YAML anchors and merge keys resolved


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def services(example_env) -> dict[str, dict]:
    return resolved(raw_compose(), example_env)["services"]


def command(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not docker_compose_available(), reason="no `docker compose` here: the YAML checks below stand in")
@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["cpu", "gpu"])
def test_docker_compose_config(profile):
    run = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), *profile,
                          "config", "-q"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr


def test_expected_services(services):
    assert set(services) == EXPECTED


def test_every_long_running_service_has_a_healthcheck(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no" and "healthcheck" not in svc, name
        else:
            test = svc.get("healthcheck", {}).get("test")
            assert test and test[0] in ("CMD", "CMD-SHELL"), name


def test_workers_consume_their_queues(services):
    assert "--queues default" in command(services["airflow-worker"])
    assert command(services["gpu-worker"]).startswith("airflow celery worker --queues gpu")
    assert services["gpu-worker"]["profiles"] == ["gpu"]
    assert "profiles" not in services["airflow-worker"]


def test_gpu_worker_reserves_nvidia_gpus(services):
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "gpu-locks:/opt/airflow/gpu-locks" in services["gpu-worker"]["volumes"]  # docker/gpu-pin.sh
    assert services["gpu-worker"]["build"]["dockerfile"] == "docker/Dockerfile.gpu-worker"


def test_celery_executor_with_redis_broker_everywhere(services):
    for name in AIRFLOW_SERVICES | {"gpu-worker"}:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0", name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://"), name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api-server:8080/execution/", name
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/kpiguard/dags", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False", name


def test_airflow_components_share_one_jwt_secret_reference():
    refs = {name: svc["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"]
            for name, svc in raw_compose()["services"].items() if "AIRFLOW__CORE__EXECUTOR" in svc.get("environment", {})}
    assert set(refs) == AIRFLOW_SERVICES | {"gpu-worker"}
    assert set(refs.values()) == {"${AIRFLOW_JWT_SECRET:?set AIRFLOW_JWT_SECRET in .env}"}


def test_airflow_config_names_exist():
    """Every AIRFLOW__SECTION__KEY is an option of Airflow 3.3 (or of the Celery provider, where installed)."""
    import airflow.config_templates

    options = {sec: set(body.get("options", {})) for sec, body in yaml.safe_load(
        (Path(airflow.config_templates.__file__).parent / "config.yml").read_text()).items()}
    try:
        from airflow.providers.celery.get_provider_info import get_provider_info
    except ImportError:  # installed with the project's deploy extra
        get_provider_info = None
    if get_provider_info is not None:
        for sec, body in get_provider_info()["config"].items():
            options.setdefault(sec, set()).update(body["options"])
    names = set(re.findall(r"\bAIRFLOW__([A-Z_]+?)__([A-Z_]+)\b", COMPOSE.read_text()))
    assert names
    for section, key in names:
        if section == "CELERY" and get_provider_info is None:
            continue
        assert key.lower() in options.get(section.lower(), set()), f"[{section.lower()}] {key.lower()}"


def test_mlflow_server(services):
    mlflow = services["mlflow"]
    cmd = command(mlflow)
    assert cmd.startswith("mlflow server")
    assert "--allowed-hosts=mlflow:5000," in cmd
    assert "--artifacts-destination=s3://kpiguard-mlflow/" in cmd
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"


def test_mlflow_requires_basic_auth(services):
    """#13.5: writing to the registry needs a login; the admin and CSRF secrets come from .env."""
    import configparser

    mlflow = services["mlflow"]
    assert "--app-name=basic-auth" in command(mlflow).split()
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/auth.ini"
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == "admin"
    raw_env = raw_compose()["services"]["mlflow"]["environment"]
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", raw_env[key]), key
    assert "mlflow-auth:/home/mlflow/auth" in mlflow["volumes"] and "mlflow-auth" in raw_compose()["volumes"]
    ini = configparser.ConfigParser()
    ini.read(DOCKER / "mlflow-auth.ini")
    assert ini["mlflow"]["default_permission"] == "READ"
    assert ini["mlflow"]["database_uri"].startswith("sqlite:////home/mlflow/auth/")
    assert "admin_password" not in ini["mlflow"]  # never a password in a file of the repository
    dockerfile = (DOCKER / "Dockerfile.mlflow").read_text()
    assert '"mlflow[auth]"' in dockerfile and "COPY docker/mlflow-auth.ini /etc/mlflow/auth.ini" in dockerfile
    # every kpiguard container logs in with the admin's credentials
    for name in WORKERS | {"airflow-scheduler", "airflow-init", "buckets"}:
        env = services[name]["environment"]
        assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("admin", "change-me"), name


def test_airflow_init_refuses_every_placeholder_secret(services, example_env):
    """#13.10c: every secret of .env.example is checked for the placeholder, PostgreSQL's and MLflow's too."""
    init = services["airflow-init"]
    checked = set(re.search(r"for var in (.*?); do", command(init), re.S).group(1).replace("\\", " ").split())
    assert {"POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SECRET_KEY"} <= checked
    assert all(var in init["environment"] for var in checked)
    # each .env.example secret reaches the check, directly or inside a value that is checked
    raw_init = raw_compose()["services"]["airflow-init"]["environment"]
    covered = {m.group(2) for var in checked for m in VAR.finditer(str(raw_init.get(var, ""))) if m.group(2)}
    secrets = {k for k in example_env if SECRET_NAME.search(k)} - {"AWS_ACCESS_KEY_ID"}
    assert secrets <= covered | checked, sorted(secrets - covered - checked)


def strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def test_every_compose_variable_is_in_env_example(example_env):
    used = {m.group(2) for text in strings(raw_compose()) for m in VAR.finditer(text) if m.group(2)}
    assert used and used <= set(example_env), sorted(used - set(example_env))


def test_code_env_reaches_the_workers(services, example_env):
    assert set(CODE_ENV) <= set(example_env)
    for name in WORKERS | {"airflow-scheduler", "airflow-init"}:
        env = services[name]["environment"]
        assert {k: env.get(k) for k in CODE_ENV} == CODE_ENV, name


def test_workers_share_the_dvc_workspace(services):
    for name in AIRFLOW_SERVICES | {"gpu-worker"}:
        assert "workspace:/opt/kpiguard" in services[name]["volumes"], name
    assert "workspace" in raw_compose()["volumes"]


def test_no_secret_literals_in_compose(example_env):
    """A secret's value is a ${VAR:?...} reference; a URL's password too."""
    for name, svc in raw_compose()["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            value = str(value)
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", value), f"{name}: {key}={value}"
            for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", password), f"{name}: {key}"
    secrets = {k: v for k, v in example_env.items() if SECRET_NAME.search(k)}
    assert secrets and set(secrets.values()) == {"change-me"}


def test_every_secret_is_required(example_env):
    """Without .env, compose stops at the first secret (`${VAR:?...}`) instead of running with a blank."""
    env = {k: v for k, v in example_env.items() if not SECRET_NAME.search(k)}
    with pytest.raises(KeyError, match="in .env"):
        resolved(raw_compose(), env)


def dockerfile_user(path: Path) -> str:
    text = path.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    user = re.findall(r"^USER (\S+)", text, re.M)[-1]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], user)


@pytest.mark.parametrize("name", ["airflow", "gpu-worker", "mlflow"])
def test_dockerfiles_run_as_non_root(name):
    user = dockerfile_user(DOCKER / f"Dockerfile.{name}")
    assert user.split(":")[0] not in ("root", "0"), user
    assert int(user.split(":")[0]) >= 1000


def test_gpu_dockerfile():
    text = (DOCKER / "Dockerfile.gpu-worker").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu22\.04$", text, re.M)
    assert re.search(r'^CMD \["airflow", "celery", "worker", "--queues", "gpu"', text, re.M)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu12" in text
    assert "grep -v '^torch==' requirements.lock" in text  # the lock's CPU torch is not a constraint here
    assert "inspect ping -d \"celery@${HOSTNAME}\"" in text
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/kpiguard-gpu-pin"]' in text


def test_airflow_dockerfile():
    text = (DOCKER / "Dockerfile.airflow").read_text()
    # one stage; its base a build argument whose default is the public python image (docs/deploy.md)
    assert text.count("\nFROM ") == 1 and "\nARG BASE=python:3.11-slim-bookworm\nFROM ${BASE}\n" in text
    assert "ENV PYTHONDONTWRITEBYTECODE" in text and "PATH=/opt/venv/bin:${PATH}" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert '-c requirements.lock ".[deploy]"' in text
    assert "AIRFLOW_HOME=/opt/airflow" in text and "KPIGUARD_WORKSPACE=/opt/kpiguard" in text


def test_mlflow_dockerfile():
    text = (DOCKER / "Dockerfile.mlflow").read_text()
    assert "\nARG BASE=python:3.11-slim-bookworm\nFROM ${BASE}\n" in text and "PATH=/opt/venv/bin:${PATH}" in text


@pytest.mark.parametrize("name", ["airflow", "gpu-worker", "mlflow"])
def test_build_time_pip_configuration_is_an_arg_never_an_env(name):
    """docker/build_images.py passes this machine's pip configuration as PIP_CONFIG_FILE for the build only."""
    text = (DOCKER / f"Dockerfile.{name}").read_text()
    uses = [line for line in text.splitlines() if "PIP_CONFIG_FILE" in line and not line.startswith("#")]
    assert uses == ["ARG PIP_CONFIG_FILE"]


@pytest.mark.parametrize("name", ["airflow", "gpu-worker"])
def test_torch_from_a_wheel_directory_or_its_index(name):
    text = (DOCKER / f"Dockerfile.{name}").read_text()
    assert "ARG TORCH_WHEELS=\n" in text
    assert 'torch_from="--find-links=${TORCH_WHEELS}"' in text and 'torch_from="--extra-index-url=${TORCH_INDEX_URL}"' in text


def test_lock_pins_what_the_images_install():
    lock = dict(line.split("==", 1) for line in (REPO / "requirements.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert lock["torch"] == "2.13.0+cpu" and lock["mlflow"].startswith("3.17.")
    assert lock["apache-airflow-providers-celery"].startswith("3.26.") and "redis" in lock  # the deploy extra


def test_dockerignore_keeps_secrets_and_state_out():
    patterns = set((REPO / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv/", "data/", "models/artifacts/", "reports/", "dvc.lock"} <= patterns
    assert "/.env" in (REPO / ".gitignore").read_text().split()


def test_the_scoring_worker_waits_for_prometheus_and_alertmanager(services):
    needs = services["airflow-worker"]["depends_on"]
    assert needs["prometheus"]["condition"] == needs["alertmanager"]["condition"] == "service_healthy"
    for name, port in (("prometheus", "9090"), ("alertmanager", "9093")):
        assert any(str(p).endswith(f":{port}") and str(p).startswith("127.0.0.1:") for p in services[name]["ports"]), name


@pytest.mark.parametrize("name", ["prometheus.yml", "alertmanager.yml"])
def test_the_alerting_configs_parse_and_route(name):
    config = yaml.safe_load((REPO / "docker" / name).read_text())
    if name == "alertmanager.yml":
        receivers = {r["name"] for r in config["receivers"]}
        assert config["route"]["receiver"] in receivers and "kpi" in config["route"]["group_by"]
    else:
        assert config["scrape_configs"]


@pytest.mark.skipif(shutil.which("promtool") is None or shutil.which("amtool") is None,
                    reason="promtool / amtool (make prometheus) not installed")
def test_the_alerting_configs_pass_their_own_checkers():
    for cmd in (["promtool", "check", "config", str(REPO / "docker" / "prometheus.yml")],
                ["amtool", "check-config", str(REPO / "docker" / "alertmanager.yml")]):
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
