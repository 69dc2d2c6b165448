"""Rewrite the documentation's generated blocks (configuration tables) from the schema."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workloads.campaign.spec import ALIASES  # noqa: E402
from workloads.describe.schema import generated_blocks, splice  # noqa: E402


def main() -> int:
    for (name, marker), body in generated_blocks(ALIASES).items():
        path = ROOT / name
        text = path.read_text()
        new = splice(text, marker, body)
        if new != text:
            path.write_text(new)
            print(f"{name}: {marker} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
