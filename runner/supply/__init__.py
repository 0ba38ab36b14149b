"""The supply chain of a build: what it is made from (`inputs`: BuildInputs, base images
resolved to digests), its provenance (`provenance`: an in-toto SLSA v1 statement), signing
keys (`keys`), cosign's formats in a registry (`cosign`), attaching them after a push
(`attester`) and checking them (`verify`). Below the worker, beside the executors: it knows
the registries (runner.core) and the build context (runner.context), never the settings."""
