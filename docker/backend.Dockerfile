# syntax=docker/dockerfile:1
# Image of the demo backend (GET /, /limited_endpoint, /health).
# Built from the repository root (the whole workspace is the build context):
#   docker build -f docker/backend.Dockerfile .

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
# The whole workspace: cargo needs every member's manifest to resolve it, even for one package.
COPY . .
# The registry and target caches survive between builds; the binary is copied out of the
# cached target directory because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p backend \
    && cp target/release/backend /usr/local/bin/backend

FROM debian:bookworm-slim
# curl is only for the container health check (docker-compose.yml).
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --uid 10001 --shell /usr/sbin/nologin app
COPY --from=builder /usr/local/bin/backend /usr/local/bin/backend
USER app
ENV BACKEND_HOST=0.0.0.0
ENV RUST_LOG=info
EXPOSE 8001
ENTRYPOINT ["/usr/local/bin/backend"]
CMD ["--name", "backend", "--port", "8001"]
