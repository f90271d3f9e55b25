# Stand-in for the official Prometheus image on machines without an image registry: Prometheus
# from the Debian package, with the official image's interface (the binary as entrypoint,
# /etc/prometheus for the configuration, /prometheus for the data, run as `nobody`), so that
# docker-compose.yml's `monitoring` profile runs it unchanged. wget serves the health check, as
# busybox's does in the official image. Made by `cargo xtask images`.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# No service may start while the package installs.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus \
    && prometheus --version
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
