"""The sweep driver as a Ray Job, through Ray's Job Submission API (the head's dashboard, port 8265).

The job runs ``segsweep sweep run|resume ... --address auto`` on the cluster's head, in the
environment the cluster has installed: no code is shipped. The trials need TensorFlow,
segmentation-models and segsweep itself on every worker node, which a Ray Jobs ``working_dir``
cannot carry (it ships a folder of Python files, up to 100 MiB, not an installed stack), and a
per-job ``pip`` runtime environment would reinstall that stack for every job; so the cluster's
image (a KubeRay image, a cloud cluster's setup commands) installs segsweep once, at the version
the sweep should run. The client needs ``ray[default]`` (``pip install 'segsweep[cluster]'``).

Stopping a job sends SIGINT to the driver (``RAY_JOB_STOP_SIGNAL``), which the driver takes as a
first Ctrl-C: no new trials, running trials end their current fold, Ray Tune saves the sweep's
state, and the job ends STOPPED (``sweep stop --now`` ends it without waiting for the folds).
"""

from __future__ import annotations

import contextlib
import re
import shlex
import sys
import uuid
from collections.abc import Iterator
from typing import Any

from segsweep.base.errors import ConfigError
from sweeps.folder import SweepFolder

#: How long a stopped driver may take (running folds end first) before Ray kills it; a killed driver
#: loses only the running folds (the sweep resumes from Tune's last snapshot).
STOP_WAIT_SECONDS = 3 * 3600
_URL = re.compile(r"^https?://[^/\s]+(:\d+)?/?$")


def _client(address: str) -> Any:
    if not _URL.match(address):
        raise ConfigError(
            f"--ray {address!r} is not the address of a Ray dashboard; give its URL, e.g. http://HEAD_IP:8265"
        )
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:  # pragma: no cover - ray is a dependency; its dashboard extras may be missing
        raise ConfigError("Ray's Job Submission client is missing; pip install 'segsweep[cluster]'") from None
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, or RuntimeError for a missing extra or a refused token
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, ModuleNotFoundError) or "pip install" in first:
            raise ConfigError(
                f"Ray Jobs need Ray's dashboard extras: pip install 'segsweep[cluster]' ({first})"
            ) from None
        raise ConfigError(
            f"cannot reach the Ray dashboard at {address}: {first}; start the head with "
            "`ray start --head --dashboard-host 0.0.0.0` (port 8265) and, with token authentication, export "
            "the cluster's RAY_AUTH_MODE=token and RAY_AUTH_TOKEN here too"
        ) from None


def submit(address: str, folder: SweepFolder, argv: list[str], *, dry_run: bool = False) -> str | None:
    """Submit ``argv`` (a ``segsweep sweep run|resume`` command line) as a Ray Job; its id.

    ``dry_run`` prints the entry point and submits nothing.
    """
    entrypoint = shlex.join([*argv, "--address", "auto"])
    if dry_run:
        print(f"[segsweep] would submit to {address}: {entrypoint}", file=sys.stderr)
        return None
    client = _client(address)
    job_id = f"segsweep-{folder.name}-{uuid.uuid4().hex[:8]}"
    runtime_env = {"env_vars": {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_SECONDS)}}
    try:
        return str(
            client.submit_job(
                entrypoint=entrypoint,
                submission_id=job_id,
                runtime_env=runtime_env,
                metadata={"segsweep_sweep": folder.name, "storage": str(folder.storage)},
            )
        )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"the Ray cluster at {address} refused the job: {first}") from None


@contextlib.contextmanager
def _job_call(what: str) -> Iterator[None]:
    """A Jobs API call whose failure becomes one line naming ``what`` (ConfigError passes through)."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{what}: {exc}") from None


def status(address: str, job_id: str) -> str:
    """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    with _job_call(f"Ray Job {job_id} at {address}"):
        return str(_client(address).get_job_status(job_id).value)


def logs(address: str, job_id: str) -> str:
    with _job_call(f"Ray Job {job_id} at {address}"):
        return str(_client(address).get_job_logs(job_id))


def stop(address: str, job_id: str) -> None:
    with _job_call(f"cannot stop Ray Job {job_id} at {address}"):
        _client(address).stop_job(job_id)


def follow(address: str, job_id: str) -> str:
    """Print the job's log as it grows until the job ends; its final status."""
    import asyncio

    client = _client(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except Exception as exc:
        raise ConfigError(f"cannot follow Ray Job {job_id} at {address}: {exc}") from None
    return status(address, job_id)
