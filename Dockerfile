# The Loomwork image: `loomwork server` (the default) or `loomwork worker` against external
# PostgreSQL + pgvector, Redis and Temporal (see docker-compose.yml). It carries no embedded
# servers: those come with the `loomwork[embedded]` extra, for `loomwork up` on a laptop.

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/loomwork
COPY pyproject.toml README.md ./
COPY loomwork loomwork
COPY server server
COPY workflows workflows
COPY activities activities
COPY clients clients
COPY protos protos
# No extras: not `embedded` (the servers `loomwork up` starts), not `dev`.
RUN /opt/loomwork/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 loomwork \
    && useradd --system --uid 10001 --gid loomwork --create-home --home-dir /home/loomwork loomwork
COPY --from=build /opt/loomwork /opt/loomwork
ENV PATH=/opt/loomwork/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LOOMWORK_HOME=/home/loomwork/.loomwork \
    LOOMWORK_GRPC_ADDRESS=0.0.0.0:50051 \
    LOOMWORK_HTTP_ADDRESS=0.0.0.0:8080
# Numeric, so a cluster that requires non-root (runAsNonRoot) can tell without a passwd file.
USER 10001:10001
WORKDIR /home/loomwork
EXPOSE 50051 8080
# A server: its gRPC health SERVING (over TLS: its HTTP endpoint answering); a worker: this
# container's worker polling the task queue. `loomwork health` tells which it is.
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 \
    CMD ["loomwork", "health"]
ENTRYPOINT ["loomwork"]
CMD ["server"]
