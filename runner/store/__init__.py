"""Redis: the only package that names its keys. jobstore names every key of a job (records,
indexes, logs, contexts, leases, workers), outbox those of the deliveries owed and circuits those
of the delivery hosts' circuits; joblog and logfollow go through jobstore's names, buildqueue
writes task messages to Celery's queues."""
