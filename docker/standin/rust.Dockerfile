# Stand-in for the stock Rust builder image (rust:<version>-slim-bookworm) on machines without an
# image registry: the host's own rustup toolchain, copied onto the local Debian stand-in, laid
# out as the stock image lays it out (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo).
# Made by `cargo xtask images`, which prepares the build context:
#   toolchain/   the host toolchain (rustc --print sysroot) without its documentation
#   rustup       the host's rustup binary
#   ca/          the host's local CA certificates (/usr/local/share/ca-certificates), if any,
#                so that cargo in the build trusts what cargo on the host trusts
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG TOOLCHAIN
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# What the stock slim image installs next to Rust: a C toolchain for linking, and CAs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY toolchain/ /usr/local/rustup/toolchains/${TOOLCHAIN}/
COPY rustup /usr/local/cargo/bin/rustup
RUN set -e; cd /usr/local/cargo/bin; \
    for tool in cargo rustc rustdoc cargo-clippy cargo-fmt clippy-driver rustfmt rust-gdb rust-lldb; do \
        ln -s rustup "$tool"; \
    done; \
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
        "${TOOLCHAIN}" > /usr/local/rustup/settings.toml; \
    rustc --version; cargo --version
