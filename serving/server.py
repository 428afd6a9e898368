"""The model server's command line: `python -m serving.server [flags]` (the flags: serving.cli), serving
until SIGTERM or SIGINT. The flags are checked, and --help answered, before TensorFlow loads; the server
itself is serving.model_server.ModelServer."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Sequence

from components.logging_setup import configure_logging
from serving.cli import parse_command_line

logger = logging.getLogger("serving.server")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: serves until SIGTERM or SIGINT."""
    options, verbose = parse_command_line(argv)
    configure_logging(verbose=verbose)
    from serving.config import ServerConfigError
    from serving.errors import ServingError
    from serving.model_server import ModelServer

    server = ModelServer(options)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        server.start()
    except (ServerConfigError, ServingError) as e:
        logger.error("Failed to start server. Error: %s", e)
        return 1
    stopping.wait()
    logger.info("Shutting down: finishing in-flight requests (up to %.0f s)", options.shutdown_grace_seconds)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
