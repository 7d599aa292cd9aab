"""How predictable is a 2x super-resolution code from the low-res codes around it?

Reads super-resolution window rows (``cogview prepare --tasks super_resolution``), fits lookup
tables on the first 80% of the 2x codes and reports held-out accuracy of two keys:

- the refined low-res code, which of its four 2x codes, and whether it sits on the window border;
- the 3x3 low-res neighbourhood and which of the four 2x codes (accuracy among held-out codes
  whose neighbourhood was seen in the fitting part, and how many were).

This is the evidence for ``cell_sources`` (docs/jobs.md): the code is nearly a function of the
neighbourhood.

    python benchmarks/sr_lookup_tables.py --shards runs/shards/shapes-train-sr [--rows 20000]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np

from cogview.data.shards import open_data


def keys_and_targets(rows: np.ndarray, vocab) -> tuple[list, list, np.ndarray]:
    """Per 2x code: the (centre, subcell, border) key, the (3x3, subcell) key and the code."""
    boi1, boi2 = vocab.token_id("[BOI1]"), vocab.token_id("[BOI2]")
    centre, hood, target = [], [], []
    for r in rows:
        i1, i2 = int(np.argmax(r == boi1)), int(np.argmax(r == boi2))
        n_low = int(np.argmax(r == vocab.token_id("[EOI1]"))) - i1 - 1
        s = int(round(n_low**0.5))
        low = r[i1 + 1 : i1 + 1 + s * s].reshape(s, s)
        high = r[i2 + 1 : i2 + 1 + 4 * s * s].reshape(2 * s, 2 * s)
        padded = np.pad(low, 1, constant_values=-1)
        for y in range(2 * s):
            for x in range(2 * s):
                a, b, sub = y // 2, x // 2, (y % 2, x % 2)
                centre.append((low[a, b], sub, a == 0, b == 0))
                hood.append((tuple(padded[a : a + 3, b : b + 3].ravel()), sub))
                target.append(high[y, x])
    return centre, hood, np.asarray(target)


def held_out_accuracy(keys: list, target: np.ndarray, fit: np.ndarray) -> tuple[float, float]:
    """(accuracy among held-out codes whose key was seen, fraction seen) of a majority table."""
    table: dict = collections.defaultdict(collections.Counter)
    for k, y, f in zip(keys, target, fit, strict=True):
        if f:
            table[k][y] += 1
    hits = seen = total = 0
    for k, y, f in zip(keys, target, fit, strict=True):
        if not f:
            total += 1
            if k in table:
                seen += 1
                hits += table[k].most_common(1)[0][0] == y
    return hits / max(seen, 1), seen / max(total, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default="runs/shards/shapes-train-sr", help="super-resolution shards")
    p.add_argument("--rows", type=int, default=20000, help="rows to read (from the start)")
    p.add_argument("--out", default="benchmarks/results/sr_lookup_tables.json", help="JSON result file")
    args = p.parse_args()
    shards = open_data([args.shards])
    rows = shards.rows(np.arange(min(args.rows, len(shards))))
    centre, hood, target = keys_and_targets(rows, shards.vocab)
    fit = np.arange(len(target)) < int(0.8 * len(target))
    results = {}
    for name, keys in (("refined code + subcell + border", centre), ("3x3 neighbourhood + subcell", hood)):
        acc, seen = held_out_accuracy(keys, target, fit)
        results[name] = {"accuracy_where_seen": acc, "seen": seen, "accuracy_overall": acc * seen}
    print(f"{'key':<34} {'acc (seen)':>10} {'seen':>6} {'acc (all)':>10}")
    for name, r in results.items():
        print(
            f"{name:<34} {r['accuracy_where_seen']:>10.3f} {r['seen']:>6.3f} {r['accuracy_overall']:>10.3f}"
        )
    record = {"shards": args.shards, "rows": len(rows), "codes": int(len(target)), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
