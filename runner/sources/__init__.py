"""Where a job's build context comes from: an upload (Redis chunks) or a git checkout. Each
makes the checked BuildContext through runner.context's spool."""
