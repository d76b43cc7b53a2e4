"""``python -m agents.devtools.fakellm --port P [fault flags]``: the same server without Django."""

from __future__ import annotations

import argparse
import sys

from agents.devtools.fakellm.faults import FaultConfigError, add_arguments, config_from_options
from agents.devtools.fakellm.server import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m agents.devtools.fakellm",
        description="Fault-injecting upstream speaking the OpenAI and Anthropic wire formats.",
    )
    add_arguments(parser)
    options = vars(parser.parse_args(argv))
    try:
        config = config_from_options(options)
    except FaultConfigError as exc:
        parser.error(str(exc))
    try:
        run(host=options["host"], port=options["port"], config=config, announce=_say)
    except OSError as exc:
        parser.exit(
            1, f"fakellm: cannot listen on {options['host']}:{options['port']}: {exc.strerror}\n"
        )


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
