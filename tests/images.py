"""Base images for container tests and benchmarks on a machine that reaches no registry: a static busybox
with the usual folders, imported with podman and saved as an archive (what DIPLOI_CONTAINER_IMAGES loads)."""

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
TOOLS = ("sh", "httpd", "nc", "cat", "id", "echo", "chmod", "ls", "date", "wget", "sleep", "env")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


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
    conf = work / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    runroot = tempfile.mkdtemp(prefix="podman-run-")  # (podman wants a short path)
    podman = ["podman", "--runtime", "runc", "--root", str(work / "store"), "--runroot", runroot]
    env = {"PATH": PATH, "CONTAINERS_CONF": str(conf), "HOME": str(work)}
    images = work / "images"
    images.mkdir()
    for args in (
        ["import", "-q", str(work / "rootfs.tar"), "localhost/busybox:latest"],
        ["save", "-q", "-o", str(images / "busybox.tar"), "localhost/busybox:latest"],
    ):
        subprocess.run([*podman, *args], check=True, env=env, capture_output=True)
    subprocess.run([*podman, "system", "reset", "--force"], env=env, capture_output=True)
    shutil.rmtree(runroot, ignore_errors=True)
    images.chmod(0o755)
    (images / "busybox.tar").chmod(0o644)
    return images
