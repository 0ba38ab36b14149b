"""Redis: the only package that knows its keys. Records, indexes, logs, contexts, leases."""
