# xoauth-proxy container image: built on Debian 12, run as a non-root user.
#
#   docker build -t xoauth-proxy .
#   podman build --format docker -t xoauth-proxy .          # --format docker keeps HEALTHCHECK
#   ... --build-arg BASE=localhost/my-bookworm              # any Debian 12 image, e.g. a local one
#
# Run: mount the config at /etc/xoauth-proxy/config.toml, the secrets it names as files, and a
# volume at /var/lib/xoauth-proxy (the state_dir: encrypted tokens, admin.json, the lock).
# README.md "Operate it" and examples/ show compose, Kubernetes and systemd set-ups.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
LABEL org.opencontainers.image.title="xoauth-proxy-build"
# The build packages of scripts/setup.sh (keep the two lists in step).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config \
      libboost1.81-dev libboost-json1.81-dev libboost-url1.81-dev \
      libssl-dev libtomlplusplus-dev libfmt-dev libspdlog-dev libcli11-dev libargon2-dev ccache \
    && rm -rf /var/lib/apt/lists/*
# Sources only (.dockerignore keeps build*/, .git and the tests out).
COPY . /src
ARG JOBS=2
# A fresh build tree each time; ccache (content-hashed, in a BuildKit/buildah cache mount) makes
# a rebuild after a small change take seconds instead of minutes.
RUN --mount=type=cache,target=/ccache,id=xoauth-proxy-ccache,sharing=locked \
    set -e; export CCACHE_DIR=/ccache; \
    cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DXOAUTH_TESTS=OFF \
      -DCMAKE_CXX_COMPILER_LAUNCHER=ccache; \
    cmake --build /build -j "${JOBS}" --target xoauth-proxy; \
    install -D -m 0755 -s /build/xoauth-proxy /out/usr/local/bin/xoauth-proxy; \
    /out/usr/local/bin/xoauth-proxy --version; \
    ccache --show-stats | grep -iE '^ *(hits|misses)' || true; \
    rm -rf /build
# The Debian packages that hold the binary's shared libraries, found from the binary itself so
# that this list follows CMakeLists.txt (usr-merge: a library may be registered under /lib).
RUN set -e; \
    for lib in $(ldd /out/usr/local/bin/xoauth-proxy | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'); do \
      real=$(readlink -f "$lib"); \
      pkg=$(dpkg-query -S "$lib" "$real" "/usr$lib" "${real#/usr}" 2>/dev/null | head -n 1 | cut -d: -f1); \
      [ -n "$pkg" ] || { echo "no Debian package holds $lib" >&2; exit 1; }; \
      echo "$pkg" >> /out/runtime-packages.all; \
    done; \
    sort -u /out/runtime-packages.all > /out/runtime-packages; \
    cat /out/runtime-packages

FROM ${BASE}
LABEL org.opencontainers.image.title="xoauth-proxy" \
      org.opencontainers.image.description="Password logins for IMAP/POP3/SMTP clients to OAuth2 (XOAUTH2) mail servers such as Exchange Online"
COPY --from=build /out/runtime-packages /tmp/runtime-packages
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates $(cat /tmp/runtime-packages) \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log /tmp/runtime-packages \
    && groupadd --system --gid 10001 xoauth \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/xoauth-proxy \
         --shell /usr/sbin/nologin xoauth \
    && install -d -o xoauth -g xoauth -m 0700 /var/lib/xoauth-proxy \
    && install -d -m 0755 /etc/xoauth-proxy
COPY --from=build /out/usr/local/bin/xoauth-proxy /usr/local/bin/xoauth-proxy
RUN ! ldd /usr/local/bin/xoauth-proxy | grep 'not found' && xoauth-proxy --version

USER 10001:10001
ENV XOAUTH_PROXY_CONFIG=/etc/xoauth-proxy/config.toml
VOLUME ["/var/lib/xoauth-proxy"]
# The ports of examples/config.toml; config.toml decides what is really bound:
#   1143 IMAP, 1110 POP3, 1587 SMTP: the legacy application's side (plaintext on loopback for a
#        sidecar; to publish them, listen on 0.0.0.0 with tls = "starttls" or "implicit").
#   8025 admin_listen: /healthz, /readyz, the status page and the authorize API; keep it on
#        127.0.0.1 (the health check runs inside the container).
EXPOSE 1143/tcp 1110/tcp 1587/tcp 8025/tcp
# GET /healthz on admin_listen with bash's /dev/tcp: no HTTP client in the image. Set
# XOAUTH_HEALTHCHECK_ADDR (IPv4:port) when admin_listen is not 127.0.0.1:8025.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["bash", "-c", "a=${XOAUTH_HEALTHCHECK_ADDR:-127.0.0.1:8025}; exec 3<>/dev/tcp/${a%:*}/${a##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n' \"$a\" >&3 && IFS= read -r -t 5 line <&3 && [[ $line == *' 200 '* ]]"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/xoauth-proxy"]
CMD ["run"]
