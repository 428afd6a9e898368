"""Continuous evaluation of a served model: `python -m components.monitor`.

observations (prediction logs -> served images and answers), labels (labels that arrive later),
baseline (the evaluation and training data compared with), images (cheap image statistics), drift
(two-sample tests), run (windows, metrics, alerts, outputs), report (monitor.html).
"""
