# Multi-stage build: compile in the Rust image, run in a small Debian image as an
# unprivileged user. Not exercised by CI (no Docker engine on the build machines).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY config ./config
COPY src ./src
COPY web ./web
RUN cargo build --release --locked && strip target/release/swiftlogistics

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/swiftlogistics --create-home swift
COPY --from=build /src/target/release/swiftlogistics /usr/local/bin/swiftlogistics
USER swift
WORKDIR /var/lib/swiftlogistics
# Production by default: the node refuses to start without its own JWT secret
# (docker run -e JWT_SECRET=$(openssl rand -hex 32) ...), and generated admin/driver
# passwords go to /var/lib/swiftlogistics/generated-passwords.txt (mode 0600), not
# to the log.
ENV SWIFT__PROFILE=production \
    SWIFT__HTTP__BIND=0.0.0.0:3000 \
    SWIFT__STORE__PATH=/var/lib/swiftlogistics/data \
    SWIFT__AUTH__GENERATED_PASSWORDS_FILE=/var/lib/swiftlogistics/generated-passwords.txt \
    SWIFT__LOG__FORMAT=json
EXPOSE 3000
ENTRYPOINT ["swiftlogistics"]
CMD ["serve"]
