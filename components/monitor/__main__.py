"""CLI: python -m components.monitor --logs GLOB --baseline RUN_OR_DIR --output DIR [--labels FILE]."""

from __future__ import annotations

import sys

from components import cli
from components.artifacts import MONITOR_REPORT_FILE
from components.stage_runner import run_stage

ALERT_EXIT_CODE = 3


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(
        "python -m components.monitor",
        "Continuous evaluation of a served model: its prediction logs (logging_config in models.config) per time "
        "window, accuracy on labels that arrived later, drift against the evaluation and the training data, "
        "alerts; writes monitor.json, live_metrics.json (for `python -m pipeline retrain`) and monitor.html.")
    parser.add_argument("--logs", required=True, action="append",
                        help="prediction log files: a glob, file or directory (repeatable)")
    parser.add_argument("--baseline", required=True,
                        help="the served model's evaluate output, or a pipeline work directory holding one (its "
                             "newest)")
    parser.add_argument("--output", required=True, help="monitor output directory")
    parser.add_argument("--labels", help="CSV or JSONL of sha256 (of the image file) or key, and label")
    parser.add_argument("--model", default="", help="only this model's predictions (default: every model's)")
    parser.add_argument("--window", help="time window, e.g. 1d, 6h, 30m (default monitor.window)")
    parser.add_argument("--fail-on-alert", action="store_true",
                        help=f"exit with {ALERT_EXIT_CODE} when the newest window alerts")
    parser.add_argument("--webhook", default="", help="POST the alerts as JSON to this URL when the status is alert")
    parser.add_argument("--export-labelled", default="",
                        help="write the labelled served images to DIR/<label>/ (an image folder ingest takes)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    cli.add_config_arguments(parser)
    args = parser.parse_args(argv)
    cli.require_path(parser, args.baseline, "--baseline", "an evaluate output or a pipeline work directory")
    if args.labels:
        cli.require_path(parser, args.labels, "--labels", "a CSV or JSONL file of sha256/key and label")
    if args.window:
        args.overrides.append(f"monitor.window={args.window}")
    cli.start_logging(args)
    config = cli.config_from_args(parser, args)
    from components.monitor.run import run_monitor  # TensorFlow loads after the arguments are checked

    results = []

    def monitor() -> str:
        results.append(run_monitor(args.logs, args.labels, args.baseline, args.output, config, model=args.model,
                                   webhook=args.webhook, export_labelled=args.export_labelled,
                                   overwrite=args.overwrite))
        return results[-1].output

    code = run_stage("monitor", monitor, config)
    if code or not results:
        return code
    result = results[-1]
    print(f"{result.status}: {result.summary['predictions']} predictions, {result.summary['labelled']} labelled, "
          f"{len(result.summary['alerts'])} windows alerted; {result.output}/{MONITOR_REPORT_FILE}")
    return ALERT_EXIT_CODE if args.fail_on_alert and result.status == "alert" else 0


if __name__ == "__main__":
    sys.exit(main())
