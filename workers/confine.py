"""Kernel-enforced confinement of a job's rank: Landlock, for the thread that runs the job.

A rank reads its staged inputs and the software it runs, and writes only under its own job
directory; the control plane's database, the audit signing key, other members' data and other
jobs' directories are unreachable even for code that tried. The rule set is applied with
Landlock (Linux 5.13+) to the calling thread and everything it starts afterwards (torch's
thread pools, gloo, a compiler DeepSpeed runs), not to the Ray worker's own threads, which
keep serving ``poll`` and ``stop``. Where the kernel has no Landlock the job runs unconfined
and says so (:class:`Confinement`), so a deployment can see it.

Links are no way out: Landlock checks the path a file resolves to, not the link's.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Syscall numbers are the same on x86_64 and arm64 (asm-generic).
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_PR_SET_NO_NEW_PRIVS = 38
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

# Filesystem rights (include/uapi/linux/landlock.h), by the ABI that introduced them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR

# What every Python + torch process reads besides its own installation.
SYSTEM_READ = (
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/proc",
    "/sys",
    "/dev/urandom",
    "/dev/random",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/alternatives",
    "/etc/os-release",
)
SYSTEM_WRITE = ("/dev/null", "/dev/zero", "/dev/shm", "/dev/tty")


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass(frozen=True, slots=True)
class Confinement:
    """What :func:`confine` did: the Landlock ABI (0: none) and the paths it allowed."""

    abi: int
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    skipped: tuple[str, ...] = field(default_factory=tuple)

    @property
    def enforced(self) -> bool:
        return self.abi > 0

    def describe(self) -> str:
        if not self.enforced:
            return "not confined: this kernel has no Landlock"
        return f"confined by Landlock ABI {self.abi}: writes only under {', '.join(self.write)}"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI version, 0 when it has none."""
    if not sys.platform.startswith("linux"):
        return 0
    version = int(
        _libc().syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    )
    return max(version, 0)


def _handled(abi: int) -> int:
    rights = _ABI1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def job_paths(job_root: Path, extra_read: Iterable[Path] = ()) -> tuple[list[Path], list[Path]]:
    """(read-only, read-write) paths a rank of the job at ``job_root`` needs."""
    home = Path.home()
    read = [Path(p) for p in SYSTEM_READ]
    read += [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)]
    # The packages this process imports from outside its installation (an editable install
    # of Nuri: the package directories only, never the repository root and its state).
    for name in ("workers", "controlplane", "quotas", "policies"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            read.append(Path(str(module.__file__)).parent)
    read += list(extra_read)
    write = [Path(p) for p in SYSTEM_WRITE] + [job_root]
    # Compiled-op and kernel caches (DeepSpeed's CPU ops, Triton on GPU): shared by every job
    # of this user, code rather than data.
    write.append(Path(os.environ.get("TORCH_EXTENSIONS_DIR", home / ".cache" / "torch_extensions")))
    write.append(Path(os.environ.get("TRITON_CACHE_DIR", home / ".triton")))
    write += sorted(Path("/dev").glob("nvidia*"))
    return read, write


def confine(read: Iterable[Path], write: Iterable[Path]) -> Confinement:
    """Restrict the calling thread (and all it starts later) to reading ``read`` and reading
    and writing ``write``. Irreversible for the thread. Paths that do not exist are skipped
    (write paths are created first). Without Landlock, nothing is restricted."""
    abi = abi_version()
    if abi == 0:
        return Confinement(0)
    handled = _handled(abi)
    libc = _libc()
    attr = ctypes.c_uint64(handled)
    ruleset = int(libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(8), 0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    allowed_read: list[str] = []
    allowed_write: list[str] = []
    skipped: list[str] = []
    try:
        for paths, rights, out in ((write, handled, allowed_write), (read, READ, allowed_read)):
            for path in paths:
                if out is allowed_write and not path.exists() and not str(path).startswith("/dev"):
                    path.mkdir(parents=True, exist_ok=True)
                if not _add(libc, ruleset, path, rights):
                    skipped.append(str(path))
                    continue
                out.append(str(path))
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return Confinement(abi, tuple(allowed_read), tuple(allowed_write), tuple(skipped))


def _add(libc: ctypes.CDLL, ruleset: int, path: Path, rights: int) -> bool:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not path.is_dir():
            rights &= _FILE_RIGHTS
        rule = _PathBeneath(rights, fd)
        result = libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        if result != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
        return True
    finally:
        os.close(fd)


def confine_job(job_root: Path, extra_read: Iterable[Path] = ()) -> Confinement:
    """Confine the calling thread to a rank's needs (see :func:`job_paths`); its temporary
    files go to the job's own scratch directory."""
    scratch = job_root / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = str(scratch)
    read, write = job_paths(job_root, extra_read)
    return confine(read, write)
