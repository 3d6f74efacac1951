"""The gateway: one OpenAI-compatible endpoint in front of the providers, with the guarantees
`Workflow.run` gives in Python: every request pinned, guarded, budgeted and logged as a run.

`smallops gateway` serves it (cli/gateway.py); routes are read from smallops.toml
(smallops.gateway_config) and clients' keys live hashed in the log database (keys.py).
"""
