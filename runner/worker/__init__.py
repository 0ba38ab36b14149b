"""A worker process: its executors, the pipeline that runs one job, the Celery queue,
recovery and the reaper."""
