"""Get a Dask client: an address, a scheduler file, DASK_SCHEDULER_ADDRESS, or a LocalCluster.

A LocalCluster that dlowrank starts binds to 127.0.0.1, speaks TLS with a temporary
credential that only this process and its workers hold (so another local user
cannot submit code to it), and has no dashboard (its
scheduler's HTTP server, which distributed always starts, listens on a free
loopback port and answers only the health check), so a batch job opens nothing
to the network. Knows nothing of the algorithms.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import dask
from dask.system import CPU_COUNT

from dlowrank.errors import ClusterError, DlowrankWarning, ParameterError
from dlowrank.runtime.budget import MMAP_THRESHOLD

#: A default LocalCluster's workers share this part of the measured budget (the rest: the
#: scheduler and this process's growth), one worker per core while each gets at least
#: WORKER_MIN_BYTES; below that budget a run uses dask's threads in this process.
WORKER_SHARE = 0.85
WORKER_MIN_BYTES = 1 << 30
#: Default seconds to wait for a scheduler to answer, and for a first worker.
CONNECT_TIMEOUT = 30.0
NO_WORKERS_TIMEOUT = 60.0

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def connect(
    *,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    security: Any = None,
    dashboard: bool = False,
) -> Iterator[Any]:
    """Yield a ``distributed.Client`` (or None for dask's threads in this process).
    ``dashboard``: the LocalCluster serves distributed's dashboard on 127.0.0.1 (its link:
    ``client.dashboard_link``).

    Order of precedence: ``scheduler`` (an address), ``scheduler_file``, the
    ``DASK_SCHEDULER_ADDRESS`` environment variable, else a LocalCluster of
    ``workers`` processes on 127.0.0.1 (default: sized to this machine by
    distributed). ``workers=0`` runs on dask's threads in this process, with no
    cluster at all. The client, and a cluster started here, are closed on exit.
    """
    if scheduler and scheduler_file:
        raise ParameterError("give `scheduler` or `scheduler_file`, not both")
    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") if not scheduler_file else None
    from distributed import Client

    if scheduler_file and not os.path.exists(scheduler_file):
        raise ParameterError(
            f"scheduler file {scheduler_file} does not exist; start the scheduler with "
            "--scheduler-file, or give its address with --scheduler"
        )
    if address and address.startswith("tls://") and security is None:
        raise ParameterError(
            f"the scheduler {address} speaks TLS: give --tls-ca-file, --tls-cert and "
            "--tls-key (see cluster/tls)"
        )
    if address or scheduler_file:
        where = address or scheduler_file
        if address and security is None and not _private(address):
            warnings.warn(
                f"connecting to {address} without TLS: traffic to the scheduler is "
                "neither encrypted nor authenticated (see cluster/tls)",
                DlowrankWarning,
                stacklevel=3,
            )
        logger.info("connecting to the Dask scheduler at %s", where)
        kwargs = {"security": security} if security is not None else {}
        client = _client(Client, address, scheduler_file, kwargs, where)
        try:
            _wait_for_workers(client, where)
            with client.as_current():  # dask's current client inside the block only
                yield client
        finally:
            client.close()
        return
    if workers is None and memory_limit is None:
        from dlowrank.runtime.budget import measure

        budget = measure()
        if budget.total < WORKER_MIN_BYTES:
            logger.info(
                "memory budget %s is below %d MiB: running on dask's threads in this "
                "process (each worker process of a cluster would hold its own ~150 MiB)",
                budget,
                WORKER_MIN_BYTES >> 20,
            )
            workers = 0
    if workers == 0:
        yield None
        return
    with local_cluster(workers, threads_per_worker, memory_limit, security, dashboard) as client:
        yield client


@contextlib.contextmanager
def local_cluster(
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
    security: Any = None,
    dashboard: bool = False,
) -> Iterator[Any]:
    """A client of a LocalCluster of worker processes on 127.0.0.1 that only this
    process can use (TLS with a temporary credential unless ``security`` is given),
    with no dashboard unless ``dashboard`` (then distributed's dashboard, on a free
    loopback port; it needs bokeh); closed on exit.

    Without ``memory_limit``, the cluster fits the memory this process may use
    (:func:`dlowrank.runtime.budget.measure`: a cgroup limit, RLIMIT_AS or the available
    memory, minus what this process holds): ``workers`` (default: one per core, as
    many as get WORKER_MIN_BYTES each) share WORKER_SHARE of it as their memory_limit,
    so that they spill and pause (distributed's defaults) before the kernel kills them.
    """
    from distributed import Client, LocalCluster

    from dlowrank.runtime.budget import measure

    if dashboard:
        try:
            import bokeh  # noqa: F401 - distributed serves its dashboard with bokeh
        except ImportError as exc:
            from dlowrank.errors import BackendError

            raise BackendError(
                '--dashboard needs bokeh: pip install "dlowrank[dashboard]"'
            ) from exc

    if memory_limit is None:
        budget = measure()
        if workers is None:
            workers = max(1, min(CPU_COUNT, budget.total // WORKER_MIN_BYTES))
            threads_per_worker = threads_per_worker or max(1, CPU_COUNT // workers)
        memory_limit = int(WORKER_SHARE * budget.total) // workers
        logger.info(
            "memory budget %s: %d worker(s) with a memory_limit of %.0f MiB each",
            budget,
            workers,
            memory_limit / 2**20,
        )
    kwargs = {
        "n_workers": workers,
        "threads_per_worker": threads_per_worker,
        "memory_limit": memory_limit,
    }
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    logger.info("starting a LocalCluster on 127.0.0.1 (%s)", kwargs)
    # TLS with a temporary self-signed credential held only by this process and its
    # workers: another local user cannot connect and run code as this one
    kwargs.update(security=security if security is not None else True, protocol="tls://")
    # distributed's scheduler always runs an HTTP server (dashboard_address=None still
    # listens on 8787); bind it to a free loopback port and serve only the health check
    # workers give freed chunks back to the system (see runtime.budget.return_freed_memory)
    environ = {
        **dask.config.get("distributed.nanny.pre-spawn-environ", {}),
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    }
    settings = {"distributed.nanny.pre-spawn-environ": environ}
    if not dashboard:
        settings["distributed.scheduler.http.routes"] = ["distributed.http.health"]
    with (
        dask.config.set(settings),
        LocalCluster(
            host="127.0.0.1", dashboard_address="127.0.0.1:0", processes=True, **kwargs
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _client(Client: Any, address: str | None, scheduler_file: str | None, kwargs: dict, where: str):
    """Connect within ``dlowrank.connect-timeout`` seconds, or fail naming the address."""
    limit = float(dask.config.get("dlowrank.connect-timeout", None) or CONNECT_TIMEOUT)
    outcome: dict = {}

    lock = threading.Lock()

    def attempt() -> None:
        try:
            # not the process's default client: an attempt given up on that connects
            # later must not capture this process's later dask work
            client = Client(
                address,
                scheduler_file=scheduler_file,
                timeout=limit,
                set_as_default=False,
                **kwargs,
            )
        except BaseException as exc:  # reported below, in the caller's thread
            outcome["error"] = exc
            return
        with lock:
            late = outcome.get("abandoned", False)
            if not late:
                outcome["client"] = client
        if late:  # the caller has already reported the failure
            client.close()

    # distributed's own timeout does not cover a handshake with a server that accepts
    # the connection and never answers (an HTTP server): wait in a daemon thread
    thread = threading.Thread(target=attempt, name="dlowrank-connect", daemon=True)
    thread.start()
    thread.join(limit + 5.0)
    with lock:
        outcome["abandoned"] = "client" not in outcome
    exc = outcome.get("error")
    if "client" in outcome:
        return outcome["client"]
    if exc is not None and not isinstance(
        exc, (OSError, TimeoutError, MemoryError, ValueError, TypeError)
    ):
        raise exc
    # MemoryError: a server that is not a Dask scheduler answered, and its bytes were
    # read as a message length
    detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}" if exc else "no answer"
    raise ClusterError(
        f"could not connect to a Dask scheduler at {where} within {limit:g} s ({detail}); "
        "is a Dask scheduler listening there? (--connect-timeout to wait longer)"
    )


def _wait_for_workers(client: Any, where: str) -> None:
    """At least one worker within ``dlowrank.no-workers-timeout`` seconds."""
    limit = float(dask.config.get("dlowrank.no-workers-timeout", None) or NO_WORKERS_TIMEOUT)
    where = getattr(client.scheduler, "address", None) or where
    try:
        client.wait_for_workers(1, timeout=limit)
    except (TimeoutError, OSError) as exc:
        raise ClusterError(
            f"no workers joined the scheduler at {where} within {limit:g} s "
            f"({type(exc).__name__}); start workers, or raise --no-workers-timeout"
        ) from None


def _private(address: str) -> bool:
    """True for TLS addresses and for loopback hosts (nothing leaves the machine)."""
    if address.startswith("tls://"):
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def security_from_files(ca_file: str | None, cert: str | None, key: str | None) -> Any:
    """A ``distributed.Security`` requiring TLS, from PEM files (None if none given)."""
    if not (ca_file or cert or key):
        return None
    if not (ca_file and cert and key):
        raise ParameterError("TLS needs all of `tls_ca_file`, `tls_cert` and `tls_key`")
    from distributed import Security

    return Security(
        tls_ca_file=ca_file,
        tls_client_cert=cert,
        tls_client_key=key,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        require_encryption=True,
    )
