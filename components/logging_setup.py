"""How every cvpipe process logs: one format on stderr, quiet libraries, Beam workers' own lines relayed."""

from __future__ import annotations

import logging
import os
import re

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The DirectRunner relays each worker log line as one INFO line of protobuf text on this logger.
_RELAY_LOGGER = "apache_beam.runners.portability.local_job_service"
_RELAYED = re.compile(r'message: "(?P<message>(?:[^"\\]|\\.)*)".*?log_location: "(?P<location>[^"]*)"', re.S)


class _WorkerLogFilter(logging.Filter):
    """Keeps cvpipe's own worker lines (unwrapped) and worker errors; drops Beam's chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        relayed = _RELAYED.search(record.getMessage())
        if relayed is None:
            return record.levelno >= logging.WARNING
        if "/components/" not in relayed["location"] and record.levelno < logging.ERROR:
            return False
        record.msg, record.args = "[worker] " + relayed["message"], ()
        return True


def configure_logging(level: str | None = None) -> None:
    """Logs to stderr at `level` (default: $CVPIPE_LOG_LEVEL or INFO), Beam's own lines from WARNING."""
    logging.basicConfig(level=(level or os.environ.get("CVPIPE_LOG_LEVEL", "INFO")).upper(), format=LOG_FORMAT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for chatty in ("apache_beam", "absl", "tensorflow"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    relay = logging.getLogger(_RELAY_LOGGER)
    relay.setLevel(logging.INFO)
    relay.addFilter(_WorkerLogFilter())
