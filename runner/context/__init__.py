"""The build context: what `docker build` would send (pack, dockerignore and the Go rules it
rests on), reading a context tar safely (tarstream, tarpolicy), spooling and checking it on the
worker (spool, copy_filter), the BuildContext an executor is handed and unpacking it (extract).
Imports only runner.core; the sources (runner.sources: upload, git) and the executors use it."""
