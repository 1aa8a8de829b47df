"""The Slurm batch script of a sweep: Ray on the job's nodes, the sweep driver, Ray stopped after.

The script is written into the sweep folder (``SweepFolder.slurm_script``) and is meant to be read
and edited: it is the documentation of how segsweep runs on Slurm. ``sbatch`` of the same file
again continues the sweep (``sweep resume`` when sweep.json exists, ``sweep run`` otherwise), so a
job cancelled or out of time is resubmitted as it is.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from segsweep.base.errors import ConfigError
from sweeps.folder import SweepFolder

#: Seconds before the time limit at which Slurm signals the script, so that the driver stops
#: gracefully (Tune saves the experiment state) and Ray is stopped before the job is killed.
STOP_GRACE_SECONDS = 120
#: How long the script waits for every node's Ray to join the head before it gives up.
JOIN_TIMEOUT_SECONDS = 300
_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")


@dataclass
class SlurmOptions:
    """What the batch script asks of Slurm and how it sets up the environment on the nodes."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_node: int | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    sbatch_args: list[str] = field(default_factory=list)
    #: Shell lines run on every node before segsweep (``module load ...``, ``source VENV/bin/activate``).
    setup: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.nodes < 1:
            raise ConfigError(f"--nodes must be at least 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise ConfigError(f"--gpus-per-node must be 0 or more, got {self.gpus_per_node}")
        if self.cpus_per_node is not None and self.cpus_per_node < 1:
            raise ConfigError(f"--cpus-per-node must be at least 1, got {self.cpus_per_node}")
        if self.time is not None and not _TIME.match(self.time):
            raise ConfigError(f"--time {self.time!r} is not a Slurm time; use HH:MM:SS or D-HH:MM:SS (e.g. 12:00:00)")


def batch_script(
    folder: SweepFolder, options: SlurmOptions, run_argv: list[str], object_store_bytes: int, written: str
) -> str:
    """The text of the batch script for the sweep in ``folder``.

    ``run_argv`` is the ``segsweep sweep run`` command line (without ``--address``, which the
    script adds once the head is up).
    """
    directives = [f"--job-name=segsweep-{folder.name}", f"--nodes={options.nodes}", "--ntasks-per-node=1"]
    if options.cpus_per_node:
        directives.append(f"--cpus-per-task={options.cpus_per_node}")
    else:
        directives.append("--exclusive")
    if options.gpus_per_node:
        directives.append(f"--gpus-per-node={options.gpus_per_node}")
    if options.time:
        directives.append(f"--time={options.time}")
    if options.partition:
        directives.append(f"--partition={options.partition}")
    if options.account:
        directives.append(f"--account={options.account}")
    directives.append(f"--output={folder.slurm_log_pattern}")
    directives.append(f"--signal=B:TERM@{STOP_GRACE_SECONDS}")
    directives.extend(options.sbatch_args)
    sbatch_lines = "\n".join(f"#SBATCH {d}" for d in directives)
    setup = "\n".join(options.setup) if options.setup else "# (nothing to set up: segsweep is on PATH)"
    gpus = f" --num-gpus={options.gpus_per_node}" if options.gpus_per_node else ""
    step_gpus = f" --gpus-per-node={options.gpus_per_node}" if options.gpus_per_node else ""
    storage, name = shlex.quote(str(folder.storage)), shlex.quote(folder.name)
    run_command = _wrapped(run_argv)
    return _TEMPLATE.format(
        name=folder.name,
        written=written,
        sbatch_lines=sbatch_lines,
        setup=setup,
        sweep_dir=shlex.quote(str(folder.path)),
        storage=storage,
        quoted_name=name,
        run_command=run_command,
        object_store_bytes=object_store_bytes,
        gpus=gpus,
        step_gpus=step_gpus,
        join_timeout=JOIN_TIMEOUT_SECONDS,
        grace=STOP_GRACE_SECONDS,
        script=shlex.quote(str(folder.slurm_script)),
    )


def _wrapped(argv: list[str]) -> str:
    """A command line as shell words, one option and its value per continued line."""
    words = [shlex.quote(a) for a in argv]
    lines, current = [], words[:3]
    for word in words[3:]:
        if word.startswith("--") and current:
            lines.append(" ".join(current))
            current = []
        current.append(word)
    lines.append(" ".join(current))
    return " \\\n    ".join(lines)


def sbatch(script: Path) -> str:
    """Submit ``script`` with ``sbatch``; the job id."""
    try:
        proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ConfigError(
            f"sbatch not found: run `segsweep sweep submit --slurm` on a Slurm login node, or submit "
            f"{script} there with `sbatch {script}`"
        ) from None
    if proc.returncode != 0:
        message = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise ConfigError(f"sbatch refused {script}: {message}; fix the option (or edit the script) and submit again")
    return proc.stdout.strip().split(";")[0]


def job_state(job_id: str) -> str | None:
    """The job's state from ``squeue`` (any job slurmctld still holds), else ``sacct``; None if unknown."""
    for argv in (
        ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
        ["sacct", "-n", "-X", "-j", job_id, "-o", "State"],
    ):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            continue
        state = proc.stdout.strip().split()
        if proc.returncode == 0 and state:
            return state[0]
    return None


def cancel(job_id: str) -> None:
    """Ask the job to stop: SIGTERM to the batch script, whose trap stops the driver and then Ray."""
    try:
        proc = subprocess.run(
            ["scancel", "--batch", "--signal=TERM", job_id], capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        raise ConfigError(f"scancel not found: run `scancel {job_id}` on a Slurm login node") from None
    if proc.returncode != 0:
        raise ConfigError(f"scancel {job_id} failed: {proc.stderr.strip() or proc.returncode}")


_TEMPLATE = """\
#!/bin/bash
# The sweep {name!r} on a Slurm cluster, written by `segsweep sweep submit --slurm` ({written}).
#
# What it does: starts Ray (token authentication) with a head on the job's first node and a
# worker on each other node, waits until every node joined, runs the sweep driver against the
# head, and stops Ray on every node when the driver ends, the job is cancelled or runs out of time.
# Edit it as you like. Submitting it again (`segsweep sweep submit {name} --resume`, or
# `sbatch {script}`) continues the sweep: finished trials and folds are kept.
#
{sbatch_lines}
#
# --signal: {grace} s before the time limit Slurm sends SIGTERM to this script; the trap below asks
# the driver to stop (Ray Tune saves the sweep's state) and then stops Ray. `scancel --batch
# --signal=TERM JOBID` (what `segsweep sweep stop {name}` does) stops the job the same way.

set -uo pipefail
log() {{ echo "[segsweep] $(date -u +%Y-%m-%dT%H:%M:%SZ) $*"; }}

# --- the environment (the same on every node) ----------------------------------------------------
{setup}

SWEEP_DIR={sweep_dir}
log "job ${{SLURM_JOB_ID}}: sweep folder $SWEEP_DIR on nodes ${{SLURM_JOB_NODELIST}}"

# --- Ray: token authentication, a private temporary folder per job -------------------------------
export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
export RAY_AUTH_TOKEN  # srun passes the environment to every node; the token is never written down
export RAY_USAGE_STATS_ENABLED=0
# Trials at the job's own priority: Ray would add 15 to its workers' niceness (sweeps.runner.start_local_ray).
export RAY_worker_niceness=${{RAY_worker_niceness:-0}}
RAY_TEMP=/tmp/ray-${{SLURM_JOB_ID}}
# Room for the prepared data set (one copy per node, mapped by every trial) plus Ray's own objects.
OBJECT_STORE_BYTES={object_store_bytes}
CPUS=${{SLURM_CPUS_PER_TASK:-${{SLURM_CPUS_ON_NODE}}}}

# The nodes' addresses as Slurm knows them (NodeAddr), as IPv4 addresses.
node_ip() {{
  local addr
  addr=$(scontrol show node "$1" | tr ' ' '\\n' | sed -n 's/^NodeAddr=//p')
  getent ahostsv4 "${{addr:-$1}}" | awk 'NR == 1 {{print $1}}'
}}
free_port() {{ python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }}
# One node's Ray, in the foreground until SIGTERM (then it stops all of the node's Ray processes).
# The agents' ports are chosen here: Ray's raylet would otherwise give its agents a fixed 15 s to
# report theirs, which a busy node (or a slow shared file system) can miss.
# Ray 2.60's raylet waits at most 15 s for the agent's HTTP port file, and no option names that
# port to the raylet; persist_listen_port writes the file (with Ray's own function) as soon as the
# raylet names its node.
ray_node() {{
  local listen_port
  listen_port=$(free_port)
  persist_listen_port "$listen_port" &
  exec ray start --block --num-cpus="$CPUS"{gpus} --object-store-memory="$OBJECT_STORE_BYTES" \\
    --temp-dir="$RAY_TEMP" --disable-usage-stats --dashboard-agent-grpc-port="$(free_port)" \\
    --dashboard-agent-listen-port="$listen_port" --metrics-export-port="$(free_port)" \\
    --runtime-env-agent-port="$(free_port)" "$@"
}}
persist_listen_port() {{
  python - "$RAY_TEMP" "$1" <<'EOF'
import re, sys, time
from pathlib import Path
from ray._raylet import DASHBOARD_AGENT_LISTEN_PORT_NAME, persist_port
temp, port = Path(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    log = temp / "session_latest" / "logs" / "raylet.out"
    found = re.search(r"node_id=([0-9a-f]{{56}})", log.read_text(errors="replace")) if log.is_file() else None
    if found:
        persist_port(str((temp / "session_latest").resolve()), found.group(1), DASHBOARD_AGENT_LISTEN_PORT_NAME, port)
        break
    time.sleep(0.5)
EOF
}}
export -f free_port ray_node persist_listen_port
export CPUS OBJECT_STORE_BYTES RAY_TEMP
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD_NODE=${{NODES[0]}}
HEAD_IP=$(node_ip "$HEAD_NODE")
RAY_PORT=$(free_port)
export SEGSWEEP_RAY_ADDRESS="$HEAD_IP:$RAY_PORT"

RAY_STEPS=()
DRIVER=""
STOPPING=0
stop_driver() {{
  STOPPING=1
  log "job stopping (SIGTERM): asking the driver to stop; the sweep continues on resubmission"
  # SIGUSR1: Ray Tune stops the sweep gracefully and saves its state (SIGINT is ignored by
  # background processes of a script).
  [ -n "$DRIVER" ] && kill -USR1 "$DRIVER" 2>/dev/null
}}
stop_ray() {{
  # SIGTERM to each `srun ... ray start --block` step: ray start stops the node's Ray processes,
  # and Slurm ends whatever of the step is left.
  if [ "${{#RAY_STEPS[@]}}" -gt 0 ]; then
    log "stopping Ray on ${{#NODES[@]}} node(s)"
    kill -TERM "${{RAY_STEPS[@]}}" 2>/dev/null
    wait "${{RAY_STEPS[@]}}" 2>/dev/null
    RAY_STEPS=()
  fi
  rm -rf "$RAY_TEMP"
  log "Ray stopped"
}}
trap stop_driver TERM INT
trap stop_ray EXIT

# Wait until Ray at $SEGSWEEP_RAY_ADDRESS has $1 live node(s); exit 3 if the head step ($2) ended.
wait_for_ray() {{
  python - "$SEGSWEEP_RAY_ADDRESS" "$1" {join_timeout} "$2" <<'EOF'
import logging, os, socket, sys, time
import ray
address, nodes, timeout, head_step = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
deadline = time.monotonic() + timeout

def head_alive():
    try:
        os.kill(head_step, 0)
        return True
    except ProcessLookupError:
        return False

host, port = address.rsplit(":", 1)
while True:  # until the head's GCS accepts connections (ray.init would block for minutes before)
    if not head_alive():
        sys.exit(3)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"[segsweep] the Ray head at {{address}} did not answer")
        time.sleep(2)
while True:
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        break
    except Exception:  # the head's raylet is still registering, or it died
        if not head_alive():
            sys.exit(3)
        if time.monotonic() > deadline:
            raise
        time.sleep(2)
while len([n for n in ray.nodes() if n["Alive"]]) < nodes:
    if time.monotonic() > deadline:
        sys.exit(f"[segsweep] only {{len([n for n in ray.nodes() if n['Alive']])}} of {{nodes}} nodes joined")
    time.sleep(2)
ray.shutdown()
EOF
}}

# The head, on the first node (a busy node can miss Ray's start-up deadlines: up to 3 attempts).
# No dashboard and no autoscaler monitor: a Slurm allocation has a fixed set of nodes.
for attempt in 1 2 3; do
  log "starting the Ray head on $HEAD_NODE ($SEGSWEEP_RAY_ADDRESS), attempt $attempt"
  srun --nodes=1 --ntasks=1 --overlap -w "$HEAD_NODE" --cpus-per-task="$CPUS"{step_gpus} \\
    bash -c 'ray_node --head --node-ip-address="$0" --port="$1" --include-dashboard=false --no-monitor' \\
    "$HEAD_IP" "$RAY_PORT" &
  RAY_STEPS=($!)
  wait_for_ray 1 "${{RAY_STEPS[0]}}"
  HEAD_UP=$?
  [ "$HEAD_UP" -ne 3 ] && break
  # Why (Ray's raylet log names the deadline it missed).
  grep -h "Check failed" "$RAY_TEMP"/session_latest/logs/raylet.out 2>/dev/null | cut -c1-400
  RAY_STEPS=()
  rm -rf "$RAY_TEMP"
done
if [ "$HEAD_UP" -ne 0 ]; then
  log "the Ray head did not start; see the lines above"
  exit 1
fi
# A worker on each other node.
for node in "${{NODES[@]:1}}"; do
  log "starting a Ray worker on $node"
  srun --nodes=1 --ntasks=1 --overlap -w "$node" --cpus-per-task="$CPUS"{step_gpus} \\
    bash -c 'ray_node --address="$0" --node-ip-address="$1"' "$SEGSWEEP_RAY_ADDRESS" "$(node_ip "$node")" &
  RAY_STEPS+=($!)
done
if ! wait_for_ray "${{#NODES[@]}}" "${{RAY_STEPS[0]}}"; then
  log "Ray did not come up on all nodes; see the lines above"
  exit 1
fi
log "Ray is up: ${{#NODES[@]}} node(s)"

# --- the sweep driver: a new sweep, or the continuation of this one -----------------------------
if [ -f "$SWEEP_DIR/sweep.json" ]; then
  log "driver: resuming the sweep"
  segsweep sweep resume {quoted_name} --storage {storage} --address "$SEGSWEEP_RAY_ADDRESS" &
else
  log "driver: starting the sweep"
  {run_command} \\
    --address "$SEGSWEEP_RAY_ADDRESS" &
fi
DRIVER=$!
wait "$DRIVER"
STATUS=$?
while kill -0 "$DRIVER" 2>/dev/null; do  # a trapped signal interrupted `wait`: the driver is stopping
  wait "$DRIVER"
  STATUS=$?
done
log "driver ended (exit $STATUS)"
if [ "$STOPPING" -eq 1 ]; then
  log "the sweep stopped before its end; continue it with:"
  log "  segsweep sweep submit {quoted_name} --storage {storage} --resume"
fi
exit "$STATUS"
"""
