"""A real one-node SLURM cluster on this machine, for the tests of profiles/slurm.

``install()`` installs Debian's ``munge slurmctld slurmd slurm-client`` with apt-get when a
binary is missing (root only; raises :class:`SlurmUnavailable` where that cannot be done).

:class:`LocalCluster` writes ``/etc/slurm/slurm.conf`` and ``gres.conf`` (one node, this host,
advertising two stand-in GPUs; state, logs and PID files go to its own state directory), starts
``munged`` (unless one already answers), ``slurmctld`` and ``slurmd`` as child processes in the
foreground, records their PIDs and waits until the node is idle. ``stop()`` cancels leftover
jobs, ends the daemons in reverse order (SIGTERM, wait, SIGKILL), removes their PID files and
its config files (restoring any it replaced); ``leftovers()`` lists any daemon, job step or
listening SLURM port still there.

The config lives in SLURM's default place because the executor plugin drops ``SLURM_CONF``
from the environment of the ``srun`` it runs inside each job. No slurmdbd: job states come
from ``squeue`` (see tests/workflow/test_slurm.py).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])
PORTS = (6817, 6818)  # slurmctld, slurmd (6819 would be slurmdbd, which is not started)
PARTITION = "debug"
MUNGE_RUN_DIR = Path("/run/munge")
CONF_DIR = Path("/etc/slurm")
MARKER = "# one-node test cluster (tests/helpers/slurm_cluster.py)"
POLICY_RC = Path("/usr/sbin/policy-rc.d")


class SlurmUnavailable(RuntimeError):
    """SLURM is missing and cannot be installed here (not root, no apt-get, apt-get failed)."""


def which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if which(name) is None]


def install(timeout_s: float = 600) -> float:
    """Install the SLURM packages with apt-get if a binary is missing; returns seconds spent.
    Package scripts are kept from starting services by a policy-rc.d that exits 101 (created
    only if there is none, and removed again)."""
    if not missing_binaries():
        return 0.0
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            f"SLURM binaries {missing_binaries()} missing and not root, so apt-get cannot install them"
        )
    if which("apt-get") is None:
        raise SlurmUnavailable(f"SLURM binaries {missing_binaries()} missing and no apt-get (not Debian/Ubuntu)")
    start = time.monotonic()
    created_policy = not POLICY_RC.exists()
    if created_policy:
        POLICY_RC.write_text("#!/bin/sh\n# no service starts during apt-get (tests/helpers)\nexit 101\n")
        POLICY_RC.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        if result.returncode != 0:  # stale or missing package lists: refresh once
            log.info("apt-get install failed (%s); running apt-get update", result.stderr.strip()[-300:])
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=timeout_s, check=False)
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:
        raise SlurmUnavailable(f"{' '.join(cmd)} did not finish in {timeout_s:.0f} s") from err
    finally:
        if created_policy:
            POLICY_RC.unlink(missing_ok=True)
    if result.returncode != 0:
        raise SlurmUnavailable(f"{' '.join(cmd)} failed: {(result.stderr or result.stdout).strip()[-800:]}")
    if missing_binaries():
        raise SlurmUnavailable(f"still missing after apt-get: {missing_binaries()}")
    return time.monotonic() - start


def listening_ports(ports: tuple[int, ...] = PORTS) -> list[int]:
    """Which of ``ports`` a TCP socket listens on (read from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if fields[3] == "0A" and port in ports:  # 0A: LISTEN
                found.add(port)
    return sorted(found)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_named(names: set[str]) -> list[tuple[int, str]]:
    """(pid, name) of every live process whose command name is in ``names``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if name in names and alive(int(entry.name)):
                found.append((int(entry.name), name))
    return found


class LocalCluster:
    """One node (this host) with two stand-in GPUs, all state under ``state_dir``."""

    def __init__(self, state_dir: Path, partition: str = PARTITION, install_s: float = 0.0) -> None:
        self.dir = Path(state_dir)
        self.install_s = install_s  # what install() took, for the test report
        self.partition = partition
        self.host = socket.gethostname().split(".")[0]
        self.conf = CONF_DIR / "slurm.conf"
        self.conf_files = [self.conf, CONF_DIR / "gres.conf"]
        self.backups: list[tuple[Path, Path]] = []  # (file of someone else, its copy) to restore
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": SEARCH_PATH}
        self.daemons: list[tuple[str, subprocess.Popen]] = []  # in start order
        self.pid_files: list[Path] = []
        self.started_munged = False
        self.created_run_dir = False
        self.stopped = False

    # -- configuration ---------------------------------------------------------------------

    def write_config(self) -> None:
        cpus = os.cpu_count() or 1
        mem_mb = int(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 * 0.9)
        for sub in ("ctld", "spool"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
            (self.dir / sub).mkdir(parents=True)
        CONF_DIR.mkdir(parents=True, exist_ok=True)
        for path in self.conf_files:
            if path.exists() and MARKER not in path.read_text(errors="replace"):
                backup = self.dir / f"{path.name}.orig"
                shutil.copy2(path, backup)
                self.backups.append((path, backup))
        self.conf.write_text(
            f"""{MARKER}
ClusterName=detfoldtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
DefMemPerCPU=1000
StateSaveLocation={self.dir / "ctld"}
SlurmdSpoolDir={self.dir / "spool"}
SlurmctldPidFile={self.dir / "slurmctld.pid"}
SlurmdPidFile={self.dir / "slurmd.pid"}
SlurmctldLogFile={self.dir / "slurmctld.log"}
SlurmdLogFile={self.dir / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} Gres=gpu:2 State=UNKNOWN
PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )
        # A gpu GRES needs a device file or slurmd drops it; /dev/null and /dev/zero stand in for
        # the GPUs, and a job that gets one sees CUDA_VISIBLE_DEVICES=0 (or 1), both: 0,1.
        devices = "".join(f"NodeName={self.host} Name=gpu File={dev}\n" for dev in ("/dev/null", "/dev/zero"))
        (CONF_DIR / "gres.conf").write_text(f"{MARKER}\nAutoDetect=off\n{devices}")
        self.pid_files = [self.dir / "slurmctld.pid", self.dir / "slurmd.pid"]

    # -- start ---------------------------------------------------------------------------

    def run(self, *cmd: str, timeout: float = 30, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=check, **kwargs)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.dir / f"{name}.out", "w")  # noqa: SIM115 (the daemon keeps writing to it)
        proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.daemons.append((name, proc))
        log.info("started %s (pid %d)", name, proc.pid)

    def _wait(self, what: str, ready, timeout: float, daemon: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for name, proc in self.daemons:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode} while waiting for {what}:\n{self.tail(name)}"
                    )
            time.sleep(0.5)
        raise RuntimeError(
            f"timed out after {timeout:.0f} s waiting for {what}:\n{self.tail(daemon) if daemon else ''}"
        )

    def tail(self, name: str, chars: int = 3000) -> str:
        text = ""
        for path in (self.dir / f"{name}.log", self.dir / f"{name}.out"):
            if path.exists():
                text += f"== {path}\n{path.read_text(errors='replace')[-chars:]}\n"
        return text

    def munge_works(self) -> bool:
        try:
            cred = self.run("munge", "-n", timeout=10)
            return cred.returncode == 0 and self.run("unmunge", input=cred.stdout, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def node_state(self) -> str:
        result = self.run("sinfo", "-h", "-n", self.host, "-o", "%T", timeout=10)
        return result.stdout.strip() if result.returncode == 0 else ""

    def start(self) -> None:
        busy = listening_ports()
        if busy:
            raise RuntimeError(f"SLURM port(s) {busy} already in use: is another SLURM running on this machine?")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        if not self.munge_works():
            self._start_munged()
        self._spawn("slurmctld", [which("slurmctld"), "-D", "-f", str(self.conf)])
        self._wait("slurmctld", lambda: "UP" in self.run("scontrol", "ping", timeout=10).stdout, 60, "slurmctld")
        self._spawn("slurmd", [which("slurmd"), "-D", "-f", str(self.conf)])
        self._wait(f"node {self.host} idle", lambda: self.node_state() == "idle", 60, "slurmd")

    def _start_munged(self) -> None:
        munge = pwd.getpwnam("munge")
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run([which("mungekey"), "--create", "--keyfile", str(key)], check=True, timeout=30)
            os.chown(key, munge.pw_uid, munge.pw_gid)
            key.chmod(0o600)
        self.created_run_dir = not MUNGE_RUN_DIR.exists()
        MUNGE_RUN_DIR.mkdir(parents=True, exist_ok=True)
        os.chown(MUNGE_RUN_DIR, munge.pw_uid, munge.pw_gid)
        MUNGE_RUN_DIR.chmod(0o755)
        self.pid_files.append(MUNGE_RUN_DIR / "munged.pid")
        self.started_munged = True
        cmd = [which("setpriv"), "--reuid=munge", "--regid=munge", "--init-groups", which("munged"), "--foreground"]
        self._spawn("munged", cmd)
        self._wait("munge", self.munge_works, 30, "munged")

    # -- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel what is still queued, end every daemon this object started (reverse order:
        SIGTERM, up to 15 s, SIGKILL) and remove their PID files. Safe to call twice."""
        if self.stopped:
            return
        self.stopped = True
        if any(name == "slurmctld" and proc.poll() is None for name, proc in self.daemons):
            try:
                self.run("scancel", "--user", pwd.getpwuid(os.getuid()).pw_name, timeout=15)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and self.run("squeue", "-h", "-t", "R,CG,PD", timeout=10).stdout:
                    time.sleep(0.5)
            except (OSError, subprocess.SubprocessError) as err:
                log.warning("could not cancel leftover jobs: %s", err)
        for name, proc in reversed(self.daemons):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    log.warning("%s (pid %d) ignored SIGTERM; killing it", name, proc.pid)
                    proc.kill()
                    proc.wait(10)
            log.info("stopped %s (pid %d, exit %s)", name, proc.pid, proc.returncode)
        for path in [*self.pid_files, *self.conf_files]:
            path.unlink(missing_ok=True)
        for path, backup in self.backups:
            shutil.copy2(backup, path)
        if self.created_run_dir and not any(MUNGE_RUN_DIR.iterdir()):
            MUNGE_RUN_DIR.rmdir()

    def leftovers(self) -> list[str]:
        """What is still there after stop(): a started daemon alive, a job step process, a
        listening SLURM port, a PID file. Empty when everything was cleaned up."""
        found = [f"{name} pid {proc.pid} alive" for name, proc in self.daemons if alive(proc.pid)]
        names = {"slurmctld", "slurmd", "slurmstepd"} | ({"munged"} if self.started_munged else set())
        found += [f"process {name} pid {pid}" for pid, name in processes_named(names)]
        found += [f"port {port} listening" for port in listening_ports()]
        found += [f"{path} exists" for path in self.pid_files if path.exists()]
        return found
