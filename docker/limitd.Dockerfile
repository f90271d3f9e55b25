# syntax=docker/dockerfile:1
# Image of limitd, the rate-limit counter service (POST /v2/checks, and the deprecated /v1/check, /v1/checks; GET /healthz, /readyz, /metrics).
# Built from the repository root (the whole workspace is the build context):
#   docker build -f docker/limitd.Dockerfile .

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
# The whole workspace: cargo needs every member's manifest to resolve it, even for one package.
COPY . .
# The registry and target caches survive between builds; the binary is copied out of the
# cached target directory because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p limitd \
    && cp target/release/limitd /usr/local/bin/limitd

FROM debian:bookworm-slim
# curl is only for the container health check (docker-compose.yml).
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --uid 10001 --shell /usr/sbin/nologin app
COPY --from=builder /usr/local/bin/limitd /usr/local/bin/limitd
USER app
# limitd is configured by environment (SENTINEL_HOSTS, REDIS_MASTER, LIMITD_LISTEN, ...);
# docker-compose.yml sets them per instance.
ENV LIMITD_LISTEN=0.0.0.0:8081
ENV RUST_LOG=info
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/limitd"]
