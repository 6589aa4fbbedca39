"""Joining a Ray cluster: what every distributed step (``features.on_ray``, ``ondisk_index``) runs on.

``ADDRESS`` values: ``local`` starts a cluster of this machine's cores inside this process's session
(gone when it ends); ``auto`` joins the cluster that ``ray start --head`` started on this machine or
that ``RAY_ADDRESS`` names; anything else is a ``ray://`` or ``host:port`` address.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RAY_HELP = ("run on Ray: local (a cluster of this machine's cores) or auto (the running cluster, "
            "`ray start --head`) or a cluster address; see docs/scaling.md")


def connect(address: str, num_cpus: int | None = None) -> None:
    """Start or join the cluster at ``address`` (module docstring), once per process."""
    import ray

    if ray.is_initialized():
        return
    # Workers import this project from where the driver does (on other nodes: the same path, a
    # shared checkout or the same install), with the driver's offline-hub settings.
    here = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    kwargs = {"log_to_driver": False, "include_dashboard": False, "configure_logging": False,
              "runtime_env": {"env_vars": env}}
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    else:
        ray.init(address=address, **kwargs)
    log.info("Ray: %s", ", ".join(f"{k} {v:g}" for k, v in sorted(ray.cluster_resources().items())
                                  if k in ("CPU", "GPU")))
