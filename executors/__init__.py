"""Executors: one package per family, each executor a process-scoped object behind the seam
in executors/base.py; executors/plugins.py maps names to them. Imports only runner.context and runner.core."""
