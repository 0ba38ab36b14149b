"""Labels on everything a job makes (containers, volumes, networks), so a reaper can find it."""

LABEL_JOB = "io.runner.job"
LABEL_WORKER = "io.runner.worker"
LABEL_EXECUTOR = "io.runner.executor"
LABEL_NAMESPACE = "io.runner.namespace"
