"""The Host header check of the MLflow server, as `--allowed-hosts` configures it."""

from __future__ import annotations

import fnmatch




def mlflow_allows_host(allowed: list[str], host: str) -> bool:
    """mlflow.server.security_utils.is_allowed_host_header (mlflow 3.17), without importing the server."""
    return "*" in allowed or any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed)
