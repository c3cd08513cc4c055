"""Prefect tasks: thin wrappers that run one domain step with the orchestrator's retries and limits."""
