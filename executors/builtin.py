"""The built-in executors by name, as plain values: the settings' executor sections and the
CLI's plain reading of them (runner.config.client_plain) name the same ones without importing
an executor (executors.plugins loads them from here)."""

#: name -> (config class, executor class), as "module:attribute"
BUILTIN = {
    "socket": ("executors.engine.config:SocketConfig", "executors.engine.socket:SocketExecutor"),
    "dind": ("executors.dind.config:DindConfig", "executors.dind.executor:DindExecutor"),
    "sysbox": ("executors.dind.config:SysboxConfig", "executors.dind.sysbox:SysboxExecutor"),
    "buildah": ("executors.daemonless.config:BuildahConfig", "executors.daemonless.buildah:BuildahExecutor"),
    "img": ("executors.daemonless.config:ImgConfig", "executors.daemonless.img:ImgExecutor"),
}
#: what a job that names no executor runs on (settings' default_executor)
DEFAULT_EXECUTOR = "buildah"
#: an executor takes no jobs until its section says `enabled: true` (every built-in's Config)
ENABLED_BY_DEFAULT = False
