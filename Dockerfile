# Two images from one Dockerfile (.ci/image.sh builds each; docker-compose.yml builds `server`):
#   server  the plain Docker image most RK3588 owners run beside Home Assistant Container
#           (`docker build --target server -t wyoming-oww-rk3588 .`): no Supervisor, options as
#           OWW_* environment variables or flags, the board's vendor libraries and devices given
#           by bind mounts and --device.
#   addon   the last stage, which Home Assistant's Supervisor builds with BUILD_FROM/BUILD_ARCH
#           from build.yaml (its base image has s6-overlay and bashio): the same server with the
#           add-on's s6 services on top.
# STACK picks the board's kernel stack for the GPU:
#   vendor    Rockchip's kernel: kbase /dev/mali0 + the board's libmali (bind-mounted), rknpu +
#             librknnrt.so for the NPU heads. Debian bookworm (Python 3.11).
#   mainline  Panthor /dev/dri/renderD128 + Mesa's rusticl OpenCL, which needs Mesa >= 25 and so
#             a Debian trixie base (BUILD_FROM=debian:trixie-slim; Python 3.13). No NPU heads:
#             rknn-toolkit-lite2 has no cp313 wheel, and mainline's `rocket` NPU driver cannot
#             run them anyway (docs/gpu.md).
ARG BUILD_FROM=debian:bookworm-slim
FROM ${BUILD_FROM} AS server

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The Supervisor passes BUILD_ARCH; a hand build takes the building machine's (or qemu's).
ARG BUILD_ARCH=""
ARG STACK=vendor
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH="/opt/venv/bin:${PATH}" \
    RUSTICL_ENABLE=panfrost

# Python from Debian. With a GPU stack also the OpenCL ICD loader; vendor: libdrm, which
# libmali links against (libmali itself and librknnrt.so must match the board's kernel drivers
# and Rockchip's licence does not cover redistributing them: they are bind-mounted, or linked
# from /share/rk3588 by the add-on); mainline: Mesa's OpenCL ICD (rusticl) from Debian.
RUN \
    case "${STACK}" in vendor|mainline) ;; *) echo "STACK must be vendor or mainline, not '${STACK}'" >&2; exit 1 ;; esac \
    && arch="${BUILD_ARCH:-$(uname -m | sed s/x86_64/amd64/)}" \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && if [ "${STACK}" = "mainline" ]; then \
        apt-get install -y --no-install-recommends ocl-icd-libopencl1 mesa-opencl-icd; \
    elif [ "${arch}" = "aarch64" ]; then \
        apt-get install -y --no-install-recommends ocl-icd-libopencl1 libdrm2; \
    fi \
    && rm -rf /var/lib/apt/lists/* \
    && if [ "${STACK}" = "mainline" ] && [ ! -f /etc/OpenCL/vendors/rusticl.icd ]; then \
        echo "STACK=mainline needs Mesa's rusticl, which this base's Mesa lacks: use BUILD_FROM=debian:trixie-slim" >&2; exit 1; fi

# The package with the extras of the arch and stack: the GPU backend (pyopencl) where there
# is an OpenCL stack, the NPU backend (rknn-toolkit-lite2) on vendor aarch64, tflite (users'
# .tflite heads) everywhere, and speex (noise suppression) on bookworm's Python 3.11: it has
# no wheel for trixie's 3.13, so there --noise-suppression says it is not installed.
# rknn-toolkit-lite2 is held at 2.3.2, the release of the librknnrt.so Rockchip publishes (and
# Frigate ships), so the Python API and the runtime users can get are one release. libmali's
# ICD entry names the library by soname, so the board's file bind-mounted into the library
# path is found.
WORKDIR /usr/src/wyoming-oww-rk3588
COPY pyproject.toml README.md ./
COPY wyoming_oww_rk3588 ./wyoming_oww_rk3588
RUN \
    arch="${BUILD_ARCH:-$(uname -m | sed s/x86_64/amd64/)}" \
    && extras="speex,tflite" \
    && if [ "${STACK}" = "mainline" ]; then extras="opencl,tflite"; \
    elif [ "${arch}" = "aarch64" ]; then extras="opencl,rknn,speex,tflite"; fi \
    && echo "rknn-toolkit-lite2==2.3.2" > /tmp/constraints.txt \
    && python3 -m venv /opt/venv \
    && pip install --no-cache-dir --constraint /tmp/constraints.txt ".[${extras}]" \
    && mkdir -p /etc/OpenCL/vendors \
    && if [ "${STACK}" = "vendor" ] && [ "${arch}" = "aarch64" ]; then echo libmali.so.1 > /etc/OpenCL/vendors/mali.icd; fi \
    && rm -rf /usr/src/wyoming-oww-rk3588 /tmp/constraints.txt

WORKDIR /
EXPOSE 10400

# Healthy = the server answers a Wyoming describe with its wake models (not a port probe),
# on the port of $OWW_URI when it is set.
HEALTHCHECK --start-period=10m --interval=1m --timeout=15s \
    CMD ["python3", "-m", "wyoming_oww_rk3588.discovery", "probe", "--timeout", "10"]

# `docker run IMAGE` serves; `docker run IMAGE doctor` checks the board; flags may follow.
ENTRYPOINT ["python3", "-m", "wyoming_oww_rk3588"]
CMD []

FROM server AS addon
COPY addon/rootfs /
# Home Assistant's base image starts s6-overlay's /init, which runs the add-on's services.
ENTRYPOINT ["/init"]
CMD []
