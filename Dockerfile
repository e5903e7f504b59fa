# Minimal image for now (the operations issue adds the health check, volume docs and examples).
ARG BASE=debian:bookworm-slim
FROM ${BASE} AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config \
      libboost1.81-dev libboost-json1.81-dev libboost-url1.81-dev libssl-dev \
      libtomlplusplus-dev libfmt-dev libspdlog-dev libcli11-dev libargon2-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DXOAUTH_TESTS=OFF \
    && cmake --build /build --target xoauth-proxy

FROM ${BASE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libssl3 libboost-json1.81.0 libboost-url1.81.0 libtomlplusplus3 \
      libfmt9 libspdlog1.10 libargon2-1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/xoauth-proxy xoauth
COPY --from=build /build/xoauth-proxy /usr/local/bin/xoauth-proxy
USER xoauth
VOLUME /var/lib/xoauth-proxy
EXPOSE 1143
ENTRYPOINT ["/usr/local/bin/xoauth-proxy"]
CMD ["run", "--config", "/etc/xoauth-proxy/config.toml"]
