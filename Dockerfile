# The worker image for a Kubernetes or ECS work pool: the installed package, nothing to pull at
# run time. Build: docker build -t broadcasts:$(git rev-parse --short HEAD) .
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broadcasts broadcasts
COPY flows flows
COPY tasks tasks
COPY deployments deployments
COPY simulator simulator
RUN pip install --no-cache-dir . && useradd --create-home broadcasts
USER broadcasts
ENV PREFECT_WORKER_QUERY_SECONDS=1 PREFECT_RUNNER_POLL_FREQUENCY=1 PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30
CMD ["broadcasts", "--help"]
