# The Loomwork image: `loomwork server` or `loomwork worker` (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY loomwork loomwork
COPY server server
COPY workflows workflows
COPY activities activities
COPY clients clients
COPY protos protos
# EXTRAS=dynamodb for LOOMWORK_MEMORY_STORE=dynamodb (docker build --build-arg EXTRAS=dynamodb).
ARG EXTRAS=""
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"
ENTRYPOINT ["loomwork"]
