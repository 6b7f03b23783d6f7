"""``hsrm check RUN``: prove a sample store is whole, reading every byte (``hsrm.store.check_store``).

Opening a store (every command that reads one) already checks counts, sizes and shapes; the
checksums are here because they read the whole store."""

from __future__ import annotations

import argparse
import logging


def _cmd_check(args: argparse.Namespace) -> int:
    from rich.console import Console

    from hsrm.store import check_store

    rep = check_store(args.run)
    st = rep["store"]
    con = Console()
    if not rep["checksums"]:
        logging.getLogger("hsrm.cli").warning(
            "%s: written before hsrm recorded checksums: counts, sizes and shapes checked, the "
            "bytes cannot be; resample the store (another --out) to get a store that can prove it "
            "is whole",
            args.run,
        )
    con.print(
        f"{args.run}: {len(st._shards)} shards, {len(st._prompt_rows)} prompts, {len(st)} samples "
        f"consistent; {rep['files']} files ({rep['bytes'] / 1e6:.1f} MB) match their sha256"
        + ("" if st.complete else " (incomplete store: rerun its `hsrm sample` to finish it)")
    )
    return 0


def register(sub, groups) -> None:
    p = sub.add_parser(
        "check",
        help="verify a sample store: counts, sizes, shapes and every shard's sha256",
        description="Open the store RUN/ with all the checks every command makes (record fields, "
        "counts, sizes, tensor shapes) and compare each shard file's sha256 with the one recorded "
        "when it was written. Exit 0 when whole, 2 with a message naming the damaged file.",
    )
    p.add_argument("run", help="sample store (RUN/)")
    p.set_defaults(func=_cmd_check)
