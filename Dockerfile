# tollgate: a multi-stage build. The first stage compiles the release binary; the
# second carries only the binary, as an unprivileged user.
#
#   docker build -t tollgate .
#   docker run -p 8000:8000 tollgate
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tollgate-server \
 && cp target/release/tollgate /usr/local/bin/tollgate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 tollgate
COPY --from=build /usr/local/bin/tollgate /usr/local/bin/tollgate
USER tollgate
# Inside a container the server must listen on every interface, not loopback.
ENV TOLLGATE_LISTEN=0.0.0.0:8000
# 8081: the Envoy rate limit service (gRPC), off unless configured.
EXPOSE 8000 8081
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve"]
