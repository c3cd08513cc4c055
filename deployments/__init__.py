"""The top floor: the `broadcasts` command, the deployments and how they are served, the warm
dispatcher, the webhook, and the Prefect server's settings (README, Layout, says which module
does what)."""
