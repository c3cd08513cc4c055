"""Prefect flows: each reads like the runbook of one job."""
