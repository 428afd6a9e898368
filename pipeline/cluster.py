"""Submitting the compiled pipeline to a Kubeflow Pipelines cluster: one run, or a recurring one."""

from __future__ import annotations

import logging
from typing import Any, Mapping

logger = logging.getLogger(__name__)


def kfp_cron(expression: str) -> str:
    """KFP's six-field cron (seconds first) from a standard five-field one; six fields pass unchanged."""
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise ValueError(f"cron expression {expression!r}: expected 5 fields (minute hour day month weekday), "
                     f"e.g. \"0 3 * * *\" for 03:00 every day")


def connect(host: str, *, namespace: str | None = None, token: str | None = None):
    """A kfp.Client for the KFP API at `host` (e.g. http://localhost:8080 through a port-forward).

    Without `token`, kfp finds credentials itself (in-cluster service account, kube config).
    """
    import kfp

    return kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token)


def submit(package: str, arguments: Mapping[str, Any], *, host: str, experiment: str, run_name: str | None = None,
           namespace: str | None = None, token: str | None = None) -> str:
    """Starts one run of the compiled `package` in `experiment`; returns the KFP run id."""
    client = connect(host, namespace=namespace, token=token)
    result = client.create_run_from_pipeline_package(package, arguments=dict(arguments), run_name=run_name,
                                                     experiment_name=experiment, namespace=namespace)
    logger.info("Submitted run %s to %s (experiment %s)", result.run_id, host, experiment)
    return result.run_id


def schedule(package: str, arguments: Mapping[str, Any], *, host: str, experiment: str, name: str, cron: str,
             namespace: str | None = None, token: str | None = None) -> str:
    """Creates a recurring run of `package` on `cron` (one at a time, no catch-up); returns its id."""
    client = connect(host, namespace=namespace, token=token)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    recurring = client.create_recurring_run(experiment_id, name, cron_expression=kfp_cron(cron), max_concurrency=1,
                                            no_catchup=True, params=dict(arguments), pipeline_package_path=package)
    logger.info("Scheduled %s on %s (cron %s) at %s", name, host, cron, recurring.recurring_run_id)
    return recurring.recurring_run_id
