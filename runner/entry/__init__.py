"""Entry points: the CLI, the HTTP API and webhooks. Each turns its input into a BuildRequest
and hands it on; nothing here builds."""
