"""Releases for the deploy drills (scripts/deploy, and Swarm's own updates): images derived
from the api image of this tree, built and pushed to a registry."""

from __future__ import annotations

import subprocess

from tests.paths import ROOT
from tests.system.docker_cli import docker
from tests.system.stack import API_IMAGE

# A new release: version 2 of digits beside version 1 (the highest version is the default).
VERSION_2 = """
FROM {base}
USER root
RUN cp -r /opt/torchdock/models/digits/1 /opt/torchdock/models/digits/2 \\
 && sed -i 's/"version": 1,/"version": 2,/' /opt/torchdock/models/digits/2/manifest.json \\
 && grep -q '"version": 2,' /opt/torchdock/models/digits/2/manifest.json
USER 10001
"""
BROKEN = """
FROM {base}
ENV PORT=8001
"""


def build(dockerfile: str, tag: str) -> None:
    docker("build", "--quiet", "--tag", tag, "-", input_text=dockerfile.format(base=API_IMAGE))


def publish(source: str, target: str) -> str:
    published = subprocess.run([str(ROOT / "scripts" / "publish-image"), source, target],
                               capture_output=True, text=True, check=False)  # fmt: skip
    assert published.returncode == 0, published.stderr
    return published.stdout.strip()
