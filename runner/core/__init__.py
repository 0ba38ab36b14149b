"""The core: job models, errors, what a build is handed, the registry client, the process
runner, tar reading and safe extraction. Imports nothing else of ours."""
