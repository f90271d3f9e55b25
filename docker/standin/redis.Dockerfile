# Stand-in for the official Redis image on machines without an image registry: Redis and
# Sentinel from the Debian packages, with the official image's interface (data in the /data
# volume, `docker-entrypoint.sh` that runs `redis-server` as the `redis` user), so that
# docker-compose.yml runs it unchanged. Made by `cargo xtask images`.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-sentinel redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
