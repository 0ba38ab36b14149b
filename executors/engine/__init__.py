"""Docker Engine executors: the engine client, the classic and BuildKit builders, socket."""
