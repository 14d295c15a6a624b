"""Where a local deployment's files live: the one place that knows the layout.

Under DIPLOI_DATA_DIR/deployments/<project>.<deployment>/:
  code/                  development: the branch's checkout (persistent, edited over SSH)
  releases/<commit>/     staging/production: immutable releases made by build()
  scratch/<service>/     a fresh copy of the release, remade at every start
  storage/<service>/<volume>/   persistent volumes of add-ons
  logs/<service>.log     output of each process
  cache/                 its package managers' downloads (npm, uv, pip), kept between installs
  run/<service>.json     what exec.py runs (env included, mode 0600)
  run/<service>.phase    while its preparation runs: what it is doing (the Overview shows it)
  ports.json             host ports allocated to the deployment (stable across applies)
  problems.json          why a service could not be started on this machine
  supervisor.conf        the deployment's programs (supervisord loads them all from runtime/programs.conf)
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from deployments.runtimes.base import DeploymentSpec, ServiceSpec


@dataclass(frozen=True)
class Layout:
    data_dir: Path

    @property
    def deployments(self) -> Path:
        return self.data_dir / "deployments"

    def home(self, spec: DeploymentSpec) -> Path:
        return self.deployments / f"{spec.project_slug}.{spec.slug}"

    @staticmethod
    def group(spec: DeploymentSpec) -> str:
        """Prefix of the deployment's supervisord program groups."""
        return f"d{spec.id}-"

    def program(self, spec: DeploymentSpec, identifier: str) -> str:
        """The service's supervisord name, "group:process"."""
        name = f"{self.group(spec)}{identifier}"
        return f"{name}:{name}"

    def log_file(self, spec: DeploymentSpec, identifier: str) -> Path:
        return self.home(spec) / "logs" / f"{identifier}.log"

    def phase_file(self, spec: DeploymentSpec, identifier: str) -> Path:
        """Present while a service's preparation (an install, an add-on's set-up) runs: what it is doing."""
        return self.home(spec) / "run" / f"{identifier}.phase"

    def run_file(self, spec: DeploymentSpec, identifier: str) -> Path:
        return self.home(spec) / "run" / f"{identifier}.json"

    def volume_dir(self, spec: DeploymentSpec, service: ServiceSpec, volume: str) -> Path:
        return self.home(spec) / "storage" / service.identifier / volume

    def releases(self, spec: DeploymentSpec) -> Path:
        return self.home(spec) / "releases"

    def code(self, spec: DeploymentSpec) -> Path:
        return self.home(spec) / "code"

    def cache(self, spec: DeploymentSpec) -> Path:
        return self.home(spec) / "cache"

    def files_root(self, spec: DeploymentSpec, service: ServiceSpec, variant: str = "") -> Path:
        """A service's own files: the checkout (development components), the scratch copy of the
        release (other components; the copy a release starts beside it has its own) or its storage (add-ons)."""
        home = self.home(spec)
        if service.kind == "addon":
            return home / "storage" / service.identifier
        if spec.stage == "development":
            return home / "code"
        return home / "scratch" / f"{service.identifier}{variant}"

    def working_dir(self, spec: DeploymentSpec, service: ServiceSpec, variant: str = "") -> Path:
        """Where a service's commands run: its folder inside its files."""
        root = self.files_root(spec, service, variant)
        return root if service.kind == "addon" else root / service.folder

    def read_json(self, spec: DeploymentSpec, name: str) -> dict:
        path = self.home(spec) / name
        return json.loads(path.read_text()) if path.exists() else {}


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Readers (supervisord, exec.py) never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
