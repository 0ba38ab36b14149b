"""The API's routers, one module each: `jobs` (submit, list, read, cancel), `uploads` (a job's
context), `logs` (a job's log, read or followed), `webhooks` (git pushes). runner.entry.api
includes them with the health and metrics router (runner.entry.serve_metrics) and the dashboard's;
what they share comes through `Depends` (runner.entry.deps)."""
