"""The settings tree (a YAML file plus RUNNER_* env), with every executor's own typed config,
and the generated example."""
