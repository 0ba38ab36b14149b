"""The core: job models, errors, the log sink and cancel token a build is handed, the registry
config and client, executor metrics, the process runner. Imports nothing else of ours."""
