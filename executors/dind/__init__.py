"""Docker-in-Docker executors: a sidecar engine per job (dind, sysbox), its warm pool and cache."""
