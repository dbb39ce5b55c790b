"""A real single-node Slurm cluster for the launcher's tests: Debian's slurmctld and slurmd
(packages slurmctld, slurmd, slurm-client), started in a temporary folder with their own ports and
configuration, without munge (auth/none: loopback only, for tests), and stopped afterwards.

    with SlurmCluster(tmp_dir) as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env)

`python tests/slurm_cluster.py` starts one and keeps it up until Ctrl-C (prints SLURM_CONF)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time

DAEMONS = ("slurmctld", "slurmd")


def slurm_installed() -> bool:
    return all(shutil.which(name) for name in (*DAEMONS, "sbatch", "squeue", "sinfo"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: str, cpus: int) -> str:
    host, user = socket.gethostname().split(".")[0], getpass.getuser()
    for sub in ("state", "spool", "log"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    memory = max(1024, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2)
    settings = {
        "ClusterName": "moerltest", "SlurmctldHost": host, "SlurmUser": user, "SlurmdUser": user,
        "AuthType": "auth/none", "CredType": "cred/none",
        "SlurmctldPort": free_port(), "SlurmdPort": free_port(),
        "StateSaveLocation": f"{folder}/state", "SlurmdSpoolDir": f"{folder}/spool",
        "SlurmctldPidFile": f"{folder}/slurmctld.pid", "SlurmdPidFile": f"{folder}/slurmd.pid",
        "SlurmctldLogFile": f"{folder}/log/slurmctld.log", "SlurmdLogFile": f"{folder}/log/slurmd.log",
        "ProctrackType": "proctrack/linuxproc", "TaskPlugin": "task/none", "MpiDefault": "none",
        "SelectType": "select/cons_tres", "SelectTypeParameters": "CR_Core",
        "JobAcctGatherType": "jobacct_gather/none", "AccountingStorageType": "accounting_storage/none",
        "ReturnToService": 2, "SchedulerType": "sched/backfill", "MinJobAge": 300,
        "SlurmdParameters": "config_overrides",  # the node may declare more CPUs than it has
    }
    lines = [f"{k}={v}" for k, v in settings.items()]
    lines += [f"NodeName={host} CPUs={cpus} RealMemory={memory} State=UNKNOWN",
              "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"]
    path = os.path.join(folder, "slurm.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


class SlurmCluster:
    def __init__(self, folder: str, cpus: int | None = None):
        self.folder = os.path.abspath(folder)
        self.cpus = cpus or os.cpu_count() or 1
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ)

    def __enter__(self) -> "SlurmCluster":
        os.makedirs(self.folder, exist_ok=True)
        self.env["SLURM_CONF"] = write_config(self.folder, self.cpus)
        for daemon in DAEMONS:  # -D: in the foreground, so the test owns the processes
            log = open(os.path.join(self.folder, "log", f"{daemon}.out"), "w")
            self.procs.append(subprocess.Popen([daemon, "-D", "-f", self.env["SLURM_CONF"]], env=self.env,
                                               stdout=log, stderr=subprocess.STDOUT))
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc"):
                return self
            if any(p.poll() is not None for p in self.procs) or out.stdout.strip().startswith("drain"):
                break
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"the test Slurm cluster did not come up; see {self.folder}/log")

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []


if __name__ == "__main__":
    import tempfile
    with SlurmCluster(tempfile.mkdtemp(prefix="slurm-")) as cluster:
        print(f"export SLURM_CONF={cluster.env['SLURM_CONF']}   # Ctrl-C stops the cluster", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
