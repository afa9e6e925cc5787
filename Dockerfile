# Home Assistant add-on image: the server from this repository's source, on Home Assistant's
# Debian base (s6-overlay, bashio). Built by the Supervisor with BUILD_FROM/BUILD_ARCH from
# build.yaml; `docker build --build-arg BUILD_ARCH=amd64 .` builds the amd64 one by hand.
ARG BUILD_FROM=ghcr.io/home-assistant/amd64-base-debian:bookworm
FROM ${BUILD_FROM}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG BUILD_ARCH=amd64
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH="/opt/venv/bin:${PATH}"

# Python 3.11 from Debian. On aarch64 also the OpenCL ICD loader and libdrm, which libmali
# links against. The vendor libraries themselves (libmali, librknnrt.so) are not in the
# image: they must match the board's kernel drivers, Rockchip's licence does not cover
# redistributing them here, and the add-on links them from /share/rk3588 at start.
RUN \
    apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 \
        python3-venv \
    && if [ "${BUILD_ARCH}" = "aarch64" ]; then \
        apt-get install -y --no-install-recommends \
            libdrm2 \
            ocl-icd-libopencl1; \
    fi \
    && rm -rf /var/lib/apt/lists/*

# The package with the runtime extras of the arch: aarch64 gets the GPU (pyopencl) and NPU
# (rknn-toolkit-lite2, aarch64 only) backends; both get tflite (users' .tflite heads) and speex.
WORKDIR /usr/src/wyoming-oww-rk3588
COPY pyproject.toml README.md ./
COPY wyoming_oww_rk3588 ./wyoming_oww_rk3588
RUN \
    extras="speex,tflite" \
    && if [ "${BUILD_ARCH}" = "aarch64" ]; then extras="opencl,rknn,speex,tflite"; fi \
    && python3 -m venv /opt/venv \
    && pip install --no-cache-dir ".[${extras}]" \
    && mkdir -p /etc/OpenCL/vendors \
    && rm -rf /usr/src/wyoming-oww-rk3588

WORKDIR /
COPY addon/rootfs /

# Healthy = the server answers a Wyoming describe with its wake models (not a port probe).
HEALTHCHECK --start-period=10m --interval=1m --timeout=15s \
    CMD ["python3", "-m", "wyoming_oww_rk3588.discovery", "probe", "--timeout", "10"]
