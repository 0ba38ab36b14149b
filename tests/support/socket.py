from tests.support import ExecutorSupport

SUPPORT = ExecutorSupport(name="socket", config=lambda env: {"enabled": True}, engine=True)
