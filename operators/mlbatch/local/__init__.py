"""Local tooling: the `mlbatch` CLI, the spec scaffold, `mlbatch run`, `make up`'s stack and its
supervisor, the run display, the demo. Nothing in a deployment imports it (the CLI and tests do)."""
