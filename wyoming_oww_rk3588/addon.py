"""Whether this process runs inside the Home Assistant add-on, so that advice fits: there the user
cannot pass `docker run` flags or install into the image, only copy files to /share/rk3588 (which
the add-on links into place at start, addon/rootfs/.../init-addon/run) and restart the add-on."""

from __future__ import annotations

import os
from typing import Mapping

#: Where the add-on takes the board's vendor libraries (librknnrt.so, libmali) from.
VENDOR_DIR = "/share/rk3588"
#: The add-on's --rknn-cache-dir (addon/rootfs/.../openwakeword/run): users' converted heads.
RKNN_DIR = "/share/rk3588/rknn"


def in_addon(environ: Mapping[str, str] | None = None) -> bool:
    """The Supervisor gives every add-on SUPERVISOR_TOKEN (HASSIO_TOKEN on old Supervisors); the
    add-on's s6 scripts (with-contenv) pass it to the server and the doctor."""
    environ = os.environ if environ is None else environ
    return bool(environ.get("SUPERVISOR_TOKEN") or environ.get("HASSIO_TOKEN"))
