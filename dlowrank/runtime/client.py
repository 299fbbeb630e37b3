"""Get a Dask client: an address, a scheduler file, DASK_SCHEDULER_ADDRESS, or a LocalCluster.

A LocalCluster that dlowrank starts binds to 127.0.0.1 and has no dashboard (its
scheduler's HTTP server, which distributed always starts, listens on a free
loopback port and answers only the health check), so a batch job opens nothing
to the network. Knows nothing of the algorithms.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import dask

from dlowrank.errors import DlowrankWarning, ParameterError

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
) -> Iterator[Any]:
    """Yield a ``distributed.Client`` (or None for dask's threads in this process).

    Order of precedence: ``scheduler`` (an address), ``scheduler_file``, the
    ``DASK_SCHEDULER_ADDRESS`` environment variable, else a LocalCluster of
    ``workers`` processes on 127.0.0.1 (default: sized to this machine by
    distributed). ``workers=0`` runs on dask's threads in this process, with no
    cluster at all. The client, and a cluster started here, are closed on exit.
    """
    if scheduler and scheduler_file:
        raise ParameterError("give `scheduler` or `scheduler_file`, not both")
    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") if not scheduler_file else None
    from distributed import Client, LocalCluster

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
        client = Client(address, scheduler_file=scheduler_file, **kwargs)
        try:
            yield client
        finally:
            client.close()
        return
    if workers == 0:
        yield None
        return
    kwargs = {
        "n_workers": workers,
        "threads_per_worker": threads_per_worker,
        "memory_limit": memory_limit if memory_limit is not None else "auto",
    }
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    logger.info("starting a LocalCluster on 127.0.0.1 (%s)", kwargs)
    if security is not None:
        kwargs.update(security=security, protocol="tls://")
    # distributed's scheduler always runs an HTTP server (dashboard_address=None still
    # listens on 8787); bind it to a free loopback port and serve only the health check
    with (
        dask.config.set({"distributed.scheduler.http.routes": ["distributed.http.health"]}),
        LocalCluster(
            host="127.0.0.1", dashboard_address="127.0.0.1:0", processes=True, **kwargs
        ) as cluster,
        Client(cluster, security=security) as client,
    ):
        yield client


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
