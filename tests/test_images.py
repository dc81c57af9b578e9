"""The built images (`make images`: docker/build_images.py, buildah, no Docker daemon), run with buildah.

The tests marked `images` need root, buildah and the images: `make images-test` builds them first, and
plain `make test` leaves them out (pyproject's addopts: -m "not images"). The others check the build
script's reading of this machine's apt sources and pip configuration, and run everywhere.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("build_images", REPO / "docker" / "build_images.py")
build_images = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_images)

images = pytest.mark.images
AIRFLOW, MLFLOW = "localhost/kpiguard-airflow", "localhost/kpiguard-mlflow"
# The GPU worker's Python steps on the Debian base, CPU torch standing in for CUDA (see test below)
GPU_STAND_IN = "kpiguard-gpu-worker-cpu-standin"
# What the build borrows from this machine; none of it may stay in an image
BUILD_ONLY = ["/etc/pip.conf", "/etc/xdg/pip", "/opt/wheels", "/opt/pypi", "/opt/pypi-more", "/mnt/pip.conf",
              "/mnt/host"]


def run_build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "docker" / "build_images.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=3000)


def image_config(image: str) -> dict:
    if shutil.which("buildah") is None:
        pytest.fail("buildah is not installed: `make images` installs it")
    out = subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True, text=True)
    if out.returncode:
        pytest.fail(f"{image} is not built: `make images` builds it")
    return json.loads(out.stdout)["Docker"]["config"]


def run_in(image: str, script: str, timeout: int = 300) -> str:
    """script's output, run by sh in a fresh container of image as the image's own user and environment."""
    image_config(image)
    container = subprocess.run(["buildah", "from", "--pull=never", image], capture_output=True, text=True,
                               check=True).stdout.strip()
    try:
        run = subprocess.run(["buildah", "run", "--isolation", "chroot", container, "--", "sh", "-c", script],
                             capture_output=True, text=True, timeout=timeout)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
    assert run.returncode == 0, f"{image}: {script}\n{run.stdout}\n{run.stderr}"
    return run.stdout


# ---- the Airflow image ----------------------------------------------------------------------------------

@images
def test_airflow_version():
    assert re.fullmatch(r"3\.3\.\d+\s*", run_in(AIRFLOW, "airflow version"))


@images
def test_the_dag_folder_imports_with_no_error():
    out = run_in(AIRFLOW, 'python -c "'
                 "import json; from airflow.models import DagBag; "
                 "bag = DagBag(); "  # no examples: the image sets AIRFLOW__CORE__LOAD_EXAMPLES=False
                 "print(json.dumps([bag.dag_folder, sorted(bag.dag_ids), bag.import_errors]))\"")
    folder, dag_ids, errors = json.loads(out.strip().splitlines()[-1])
    assert folder == "/opt/kpiguard/dags" and errors == {}
    assert {"kpiguard_retrain", "kpiguard_score"} <= set(dag_ids)


@images
def test_kpiguard_cli():
    out = run_in(AIRFLOW, "kpiguard --help")
    assert out.startswith("usage: kpiguard") and "score" in out


@images
def test_the_project_imports_from_site_packages():
    """From / (not the project tree): the installed packages, as every Airflow task imports them."""
    out = run_in(AIRFLOW, 'cd / && python -c "import models, pipeline, torch; print(pipeline.__file__, torch.__version__)"')
    location, torch = out.split()
    assert location.startswith("/opt/venv/lib/python3.11/site-packages/") and torch == "2.13.0+cpu"


# ---- the MLflow image -----------------------------------------------------------------------------------

@images
def test_mlflow_version_and_auth_plugin():
    out = run_in(MLFLOW, 'mlflow --version && python -c "import mlflow.server.auth, psycopg2, boto3; print(\'auth ok\')"')
    assert re.match(r"mlflow, version 3\.17\.\d+", out) and out.rstrip().endswith("auth ok")


# ---- both -----------------------------------------------------------------------------------------------

@images
@pytest.mark.parametrize("image", [AIRFLOW, MLFLOW])
def test_runs_as_its_non_root_user(image):
    user = image_config(image)["User"]
    assert user not in ("", "0", "root")
    assert run_in(image, "id -u").strip() == user


@images
@pytest.mark.parametrize("image", [AIRFLOW, MLFLOW])
def test_nothing_of_the_build_machine_stays_in_the_image(image):
    env = dict(e.split("=", 1) for e in image_config(image)["Env"])
    assert not [k for k in env if k.startswith("PIP_") and k not in ("PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK")]
    out = run_in(image, f"for p in {' '.join(BUILD_ONLY)}; do [ -e $p ] && echo $p; done; ls -A /mnt; "
                        "pip config list | sed '/^:env:/d'")  # :env: lines: the image's own ENV
    assert out.strip() == "", out


# ---- the GPU worker, CPU stand-in -----------------------------------------------------------------------

def gpu_stand_in_dockerfile() -> str:
    """Dockerfile.gpu-worker's stages python and project on the Debian base, the CPU torch standing in.

    No CUDA base image or CUDA torch wheel can be had here, and uv's standalone CPython needs a download:
    the python stage keeps its steps but gets Debian's Python 3.11 instead; the project stage (every pip
    step, the project, the import check) is taken as it is. The final stage's CUDA assertion is left out.
    """
    text = (REPO / "docker" / "Dockerfile.gpu-worker").read_text()
    start = text.index("FROM ${CUDA_IMAGE} AS python")
    end = text.index("\nFROM project\n")
    stages = text[start:end].replace("FROM ${CUDA_IMAGE} AS python", "FROM ${BASE} AS python")
    uv_python = re.compile(r"COPY --from=uv .*?\n\n", re.S)
    assert len(uv_python.findall(stages)) == 1, "Dockerfile.gpu-worker: its uv Python step changed shape"
    stages = uv_python.sub("RUN python3 -m venv /opt/venv && python --version\n\n", stages)
    return "ARG BASE\n" + stages


@images
def test_gpu_worker_python_steps_with_a_cpu_torch_stand_in(tmp_path):
    dockerfile = tmp_path / "Dockerfile.gpu-worker-cpu-standin"
    dockerfile.write_text(gpu_stand_in_dockerfile())
    torch = build_images.locked_version("torch")
    build = run_build("--dockerfile", str(dockerfile), "--tag", GPU_STAND_IN, "--build-arg", f"TORCH_VERSION={torch}")
    assert build.returncode == 0, build.stdout + build.stderr
    out = run_in(GPU_STAND_IN, 'cd / && id -u && python -P -c "'
                 "import airflow.providers.celery, psycopg2, redis, torch, pipeline.cli; print(torch.__version__)\" "
                 "&& command -v kpiguard-gpu-pin")
    assert out.split() == ["0", torch, "/usr/local/bin/kpiguard-gpu-pin"]  # the project stage runs as root


# ---- failures -------------------------------------------------------------------------------------------

@images
@pytest.mark.parametrize("dockerfile_text, where", [
    # buildah numbers the instructions from FROM: the global ARG is not a step
    ("ARG BASE\nFROM ${BASE}\nRUN true\nRUN echo about to fail && ls /no/such/path\n", "step 3"),
    # in a multi-stage build, per stage
    ("ARG BASE\nFROM ${BASE} AS first\nRUN true\nFROM first\nRUN echo about to fail && ls /no/such/path\n",
     "step 2 of stage 2"),
], ids=["one-stage", "multi-stage"])
def test_a_failing_step_names_the_dockerfile_and_the_step(tmp_path, dockerfile_text, where):
    dockerfile = tmp_path / "Dockerfile.broken"
    dockerfile.write_text(dockerfile_text)
    build = run_build("--dockerfile", str(dockerfile), "--tag", "kpiguard-broken-test")
    output = build.stdout + build.stderr
    assert build.returncode == 1, output
    assert f"{dockerfile}: {where} (RUN echo about to fail && ls /no/such/path) failed:" in build.stderr
    assert "about to fail" in build.stderr and "/no/such/path" in build.stderr
    assert "Traceback" not in output


# ---- reading this machine: no buildah needed ------------------------------------------------------------

def test_apt_sources_deb822_and_one_line(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("# a comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main contrib\n"
                                           "deb-src http://mirror.example/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a note\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://other.example/x\nSuites: nodistro\nComponents: main\n\n"
        "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n")
    found = build_images.debian_sources(build_images.apt_sources(tmp_path))
    assert [(s["URIs"], s["Suites"], s["Components"]) for s in found] == [
        ("http://mirror.example/debian", "bookworm", "main contrib"),
        ("http://mirror.example/debian", "bookworm bookworm-updates", "main"),
        ("http://mirror.example/debian-security", "bookworm-security", "main"),
    ]


def test_no_bookworm_source_is_a_clear_error(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://mirror.example/debian trixie main\n")
    with pytest.raises(build_images.BuildError, match="no Debian 'bookworm' entry"):
        build_images.debian_sources(build_images.apt_sources(tmp_path))


def test_local_pip_paths_move_under_the_build_mount(tmp_path):
    index = tmp_path / "pypi" / "simple"
    index.mkdir(parents=True)
    mounted: set = set()
    assert build_images.in_build(f"file://{index}", mounted, with_parent=True) == f"file:///mnt/host{index}"
    assert build_images.in_build(str(tmp_path), mounted) == f"/mnt/host{tmp_path}"
    assert build_images.in_build("https://pypi.example/simple", mounted) == "https://pypi.example/simple"
    assert build_images.in_build("/no/such/dir", mounted) == "/no/such/dir"
    assert mounted == {index.parent, tmp_path}  # an index's files lie beside it (simple/../files)
