"""Submitting the compiled pipeline to a Kubeflow Pipelines cluster: one run, or a recurring one."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Iterator, Mapping

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


class ClusterError(RuntimeError):
    """The KFP API refused a request or could not be reached; the message names the host."""


@contextlib.contextmanager
def _talking_to(host: str) -> Iterator[None]:
    """Turns the KFP client's HTTP and API errors into a ClusterError naming `host`; what the client
    prints (links to the KFP UI) goes to stderr, keeping stdout for the command's result."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except (ApiException, urllib3.exceptions.HTTPError) as e:
        raise ClusterError(f"Kubeflow Pipelines at {host}: {e} (check --host, the port-forward and --token)") from e


def connect(host: str, *, namespace: str | None = None, token: str | None = None):
    """A kfp.Client for the KFP API at `host` (e.g. http://localhost:8080 through a port-forward).

    Without `token`, kfp finds credentials itself (in-cluster service account, kube config).
    """
    import warnings

    import kfp

    with warnings.catch_warnings():  # "This client only works with KFP v2.0.0-beta.2 and later": it does
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token)


def submit(package: str, arguments: Mapping[str, Any], *, host: str, experiment: str, run_name: str | None = None,
           namespace: str | None = None, token: str | None = None) -> str:
    """Starts one run of the compiled `package` in `experiment`; returns the KFP run id."""
    with _talking_to(host):
        client = connect(host, namespace=namespace, token=token)
        result = client.create_run_from_pipeline_package(package, arguments=dict(arguments), run_name=run_name,
                                                         experiment_name=experiment, namespace=namespace)
    logger.info("Submitted run %s to %s (experiment %s)", result.run_id, host, experiment)
    return result.run_id


def schedule(package: str, arguments: Mapping[str, Any], *, host: str, experiment: str, name: str, cron: str,
             namespace: str | None = None, token: str | None = None) -> str:
    """Creates a recurring run of `package` on `cron` (one at a time, no catch-up); returns its id."""
    cron = kfp_cron(cron)
    with _talking_to(host):
        client = connect(host, namespace=namespace, token=token)
        experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
        recurring = client.create_recurring_run(experiment_id, name, cron_expression=cron, max_concurrency=1,
                                                no_catchup=True, params=dict(arguments), pipeline_package_path=package)
    logger.info("Scheduled %s on %s (cron %s) at %s", name, host, cron, recurring.recurring_run_id)
    return recurring.recurring_run_id
