"""Telling others about jobs: commit statuses on the git host a job came from and completion
callbacks, delivered by the `runner.deliver` task from the outbox (runner/store/outbox.py).

  listener     the job's moments (queued at the entry points; started, requeued, finished
               here) become deliveries in the outbox
  deliveries   one attempt per task: build the request, send it, retry with backoff and
               jitter, wait for a host whose circuit is open, give up at the deadline; the
               scheduler that sends due deliveries (and each circuit's probe) again
  statuses     what GitHub, GitLab and Gitea are told, and how
  callbacks    the completion callback, signed the Standard Webhooks way
  addresses    where a callback may connect (public addresses, unless allowed)
  http         one request, its answer classified (delivered, retry, refused)
  connection   its socket: every step under one deadline, connected to the address checked
"""
