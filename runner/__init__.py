"""The CI build runner. Layers, top to bottom (docs/architecture.md): entry, worker, sources and
store, config, executors, core. Importing this package imports nothing."""
