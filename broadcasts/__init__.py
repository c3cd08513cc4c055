"""The dispatcher's domain: what to send, whether to send it, and the records of what was sent.

Nothing in this package imports Prefect, FastAPI or typer; orchestration lives in `flows/`,
`tasks/` and `deployments/`.
"""
