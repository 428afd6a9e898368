"""Offline checks of the deployment files in infra/ and the project image in containers/, for the
tests/test_infra_*.py files: what can be known without a cluster, a Docker engine or a registry. Every
checker returns a list of problems (empty when the files are right).
"""
