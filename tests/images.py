"""Base images for container tests and benchmarks on a machine that reaches no registry: a static busybox
with the usual folders, imported with podman and saved as an archive (what DIPLOI_CONTAINER_IMAGES loads)."""

import contextlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
TOOLS = ("sh", "httpd", "nc", "cat", "id", "echo", "chmod", "ls", "date", "wget", "sleep", "env")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@contextlib.contextmanager
def scratch_podman(work: Path, driver: str = "vfs") -> Iterator[tuple[list[str], dict[str, str]]]:
    """Root's podman with a store and configuration of its own under `work`, reset afterwards: its
    command and environment. The run folder is short (podman wants one) and holds its temporary files
    too (a reset removes them, which must not be /run/libpod that other tests' podman share); vfs, the
    default, leaves no mount behind."""
    conf = work / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    runroot = tempfile.mkdtemp(prefix="podman-run-")
    podman = ["podman", "--runtime", "runc", "--storage-driver", driver, "--root", str(work / "store")]
    podman += ["--runroot", runroot, "--tmpdir", runroot]
    env = {"PATH": PATH, "CONTAINERS_CONF": str(conf), "HOME": str(work)}
    try:
        yield podman, env
    finally:
        subprocess.run([*podman, "system", "reset", "--force"], env=env, capture_output=True)
        shutil.rmtree(runroot, ignore_errors=True)


def busybox_archive(work: Path) -> Path:
    """`localhost/busybox` saved under work/images/busybox.tar; returns the folder."""
    root = work / "rootfs"
    for folder in ("bin", "proc", "sys", "dev", "etc", "tmp", "app", "root", "run", "var"):
        (root / folder).mkdir(parents=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for tool in TOOLS:
        (root / "bin" / tool).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        return info

    with tarfile.open(work / "rootfs.tar", "w") as tar:
        tar.add(root, arcname=".", filter=as_root)
    images = work / "images"
    images.mkdir()
    with scratch_podman(work) as (podman, env):
        for args in (
            ["import", "-q", str(work / "rootfs.tar"), "localhost/busybox:latest"],
            ["save", "-q", "-o", str(images / "busybox.tar"), "localhost/busybox:latest"],
        ):
            done = subprocess.run([*podman, *args], env=env, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"podman {args[0]}: {done.stderr.strip()}")
    images.chmod(0o755)
    (images / "busybox.tar").chmod(0o644)
    return images


# A real OCI registry for the tests: go-containerregistry's (in memory, no login of its own), built once
# from the Go module proxy into the user's cache.
REGISTRY_MODULE = "github.com/google/go-containerregistry/cmd/registry@v0.22.1"
REGISTRY_BIN = Path.home() / ".cache" / "diploi-test-bin" / "ggcr-registry-v0.22.1" / "registry"


def registry_binary() -> Path | None:
    """The registry binary, built on first use (None where Go is not installed)."""
    if not REGISTRY_BIN.exists():
        if shutil.which("go") is None:
            return None
        REGISTRY_BIN.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOBIN": str(REGISTRY_BIN.parent), "GOFLAGS": "-mod=mod"}
        subprocess.run(["go", "install", REGISTRY_MODULE], check=True, env=env, capture_output=True, timeout=900)
    return REGISTRY_BIN


def push_archive(archive: Path, reference: str, work: Path) -> None:
    """Load an image archive (`podman save`) into a store of its own and push it to `reference` over HTTP."""
    work.mkdir(parents=True, exist_ok=True)
    with scratch_podman(work) as (podman, env):
        loaded = subprocess.run([*podman, "load", "-q", "-i", str(archive)], check=True, env=env, capture_output=True, text=True)
        source = loaded.stdout.strip().rsplit(" ", 1)[-1]  # "Loaded image: localhost/busybox:latest"
        subprocess.run([*podman, "tag", source, reference], check=True, env=env, capture_output=True)
        subprocess.run([*podman, "push", "-q", "--tls-verify=false", reference], check=True, env=env, capture_output=True)
