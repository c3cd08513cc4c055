"""Entry points: the `broadcasts` command and (later) deployments, serving and the webhook."""
