"""Entry point: `python -m wyoming_oww_rk3588 [doctor] [options]`; serving is the default."""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["doctor"]:
        from .doctor import main as doctor_main

        return doctor_main(argv[1:])
    from .cli import parse_settings

    settings = parse_settings(argv)
    logging.basicConfig(
        level=logging.DEBUG if settings.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .server import run

    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
