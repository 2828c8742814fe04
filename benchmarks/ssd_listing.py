"""The Mamba-2 paper's listing as plain einsums: it lives in `mixerc.peers.ssd_listing` (so that
`mixerc bench` ships it); this file keeps ``python benchmarks/ssd_listing.py --selftest`` and the
benchmarks' ``from ssd_listing import ...`` working."""

import sys

from mixerc.peers.ssd_listing import main, mamba2_listing, segsum, selftest, ssd_listing

__all__ = ["mamba2_listing", "segsum", "selftest", "ssd_listing"]

if __name__ == "__main__":
    sys.exit(main())
