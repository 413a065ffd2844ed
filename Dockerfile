# syntax=docker/dockerfile:1
# llmwatch agent image:   docker build -t llmwatch .       (docs/deploy.md)
#
# Build stage: the agent embeds its kernel programs, built by llmwatch/build.rs with the
# nightly toolchain (rust-src, for -Z build-std=core) and bpf-linker. `cargo xtask setup`
# installs both, exactly as on a developer machine.
FROM rust:1.95-bookworm AS build
WORKDIR /src

# Toolchain first, in its own layer, so source edits do not reinstall it. The versions are the
# ones xtask pins (xtask/src/main.rs: NIGHTLY, BPF_LINKER_VERSION; tests/deploy.rs checks
# they agree); `cargo xtask setup` below then finds them and only checks.
ARG BPF_LINKER_VERSION=0.10.0
RUN rustup toolchain install nightly --profile minimal --component rust-src \
    && cargo install "bpf-linker@${BPF_LINKER_VERSION}" --locked \
    && rm -rf /usr/local/cargo/registry /usr/local/cargo/git

COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo xtask setup \
    && cargo build --release --locked -p llmwatch

# Runtime stage: the binary is self-contained apart from glibc; ca-certificates for HTTPS
# webhooks.
FROM debian:bookworm-slim
# ca-certificates unpinned on purpose: it should follow Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/llmwatch /usr/local/bin/llmwatch

LABEL org.opencontainers.image.title="llmwatch" \
      org.opencontainers.image.description="eBPF host agent that guards AI model weights" \
      org.opencontainers.image.licenses="Apache-2.0"

# Metrics, /healthz and /readyz (metrics.addr in the config; the agent's default is loopback).
EXPOSE 9477
# Runs as root: loading eBPF programs and reading other users' /proc entries and model files
# need it (the DaemonSet runs it privileged; docs/deploy.md).
ENTRYPOINT ["/usr/local/bin/llmwatch"]
CMD ["run", "--config", "/etc/llmwatch/llmwatch.yaml"]
