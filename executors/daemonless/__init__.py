"""Daemonless executors: buildah and img, no Docker daemon at all."""
