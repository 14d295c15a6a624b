"""A filesystem of its own per deployment, so that its disk limit is the kernel's, not a warning.

As root, a deployment's folder (DIPLOI_DATA_DIR/deployments/<project>.<deployment>) is an ext4 image of
DIPLOI_LOCAL_DISK_MIB, loop-mounted with nosuid and nodev. A deployment that fills it gets ENOSPC in its
own writes; the platform's data directory and other deployments never notice. ext4 keeps 5 % of it for
root, so the platform can still write the deployment's run files and logs when the deployment has
filled its part. Images live in deployments/.disks/ (sparse: they take what is written), are mounted
again before the deployments' supervisor starts (after a reboot), and go with the deployment.

A deployment whose folder existed before this (not empty, not a mount) keeps running unlimited. A
changed allowance applies to deployments created after the change (online growth was refused by
this machine's kernel: resize2fs "Permission denied"). Not root: no images; the dashboard measures
use against the allowance instead.
"""

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

TIMEOUT = 120
RESERVED_PERCENT = 5
OVERHEAD = 8 * 1024 * 1024


class DiskFailed(Exception):
    pass


@cache
def available() -> str:
    """Why deployments cannot get a filesystem each here ("" when they can)."""
    if os.geteuid() != 0:
        return "a filesystem per deployment needs Diploi to run as root"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install e2fsprogs mount)"
    if not Path("/dev/loop-control").exists():
        return "this machine has no loop devices (/dev/loop-control)"
    return ""


def image_of(home: Path) -> Path:
    return home.parent / ".disks" / f"{home.name}.img"


@contextlib.contextmanager
def _locked(image: Path) -> Iterator[None]:
    image.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(image.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure(home: Path, size_bytes: int) -> bool:
    """`home` mounted on its image, made first if there is none. False for a folder from before images
    (not empty and no image): it stays as it is."""
    image = image_of(home)
    with _locked(image):
        if os.path.ismount(home):
            return True
        home.mkdir(mode=0o755, parents=True, exist_ok=True)
        if not image.exists():
            if any(home.iterdir()):
                return False
            tmp = image.with_suffix(".new")
            with open(tmp, "wb") as f:  # what root keeps, and ext4's own tables and journal, on top
                f.truncate(size_bytes * 100 // (100 - RESERVED_PERCENT) + OVERHEAD)
            _run(["mkfs.ext4", "-q", "-F", "-m", str(RESERVED_PERCENT), "-E", "lazy_itable_init=1,nodiscard", str(tmp)])
            tmp.rename(image)
        _run(["mount", "-o", "loop,nosuid,nodev,noatime", str(image), str(home)])
        home.chmod(0o755)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(home / "lost+found")
        return True


def mount_all(deployments: Path) -> None:
    """Every deployment's image on its folder (before its programs start again after a reboot)."""
    folder = deployments / ".disks"
    if available() or not folder.is_dir():
        return
    for image in folder.glob("*.img"):
        home = deployments / image.name.removesuffix(".img")
        with contextlib.suppress(DiskFailed, OSError):
            ensure(home, 0)  # (it exists: the size is its own)


def release(home: Path) -> None:
    """Unmount `home` and remove its image (the deployment is being destroyed; its processes are gone).
    Safe to call again."""
    image = image_of(home)
    if not image.exists() and not os.path.ismount(home):
        return
    with _locked(image):
        if os.path.ismount(home):
            try:
                _run(["umount", str(home)])
            except DiskFailed:  # a file still open somewhere: detached now, freed when closed
                _run(["umount", "--lazy", str(home)])
        image.unlink(missing_ok=True)
    image.with_suffix(".lock").unlink(missing_ok=True)


@dataclass(frozen=True)
class Usage:
    used: int
    size: int  # what the deployment may use (the part root keeps left out)

    @property
    def full(self) -> bool:
        return self.size - self.used < max(self.size // 100, 1024 * 1024)


def usage(home: Path) -> Usage | None:
    """Its filesystem's use (None when `home` is not a filesystem of its own)."""
    if not os.path.ismount(home):
        return None
    st = os.statvfs(home)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return Usage(used=used, size=used + st.f_bavail * st.f_frsize)


def unmount_under(folder: Path) -> None:
    """Unmount every deployment filesystem below `folder` (tests: their temporary data directories)."""
    prefix = str(folder.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=TIMEOUT)


def _run(argv: list[str]) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DiskFailed(f"{argv[0]} failed: {e}") from None
    if result.returncode != 0:
        raise DiskFailed(f"{argv[0]} failed: {(result.stderr or result.stdout).strip()[-300:]}")
