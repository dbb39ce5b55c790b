"""Copy embedded blocks from one agent file into every other agent file that has them.

    python tests/sync_blocks.py rainbow_moe_atari.py            # every block of that file
    python tests/sync_blocks.py rainbow_moe_atari.py moe replay # only these blocks

Edit a block in one file, run this, and tests/test_blocks.py passes again."""

import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"^# ---- block: (\S+) ----\n(.*?)^# ---- end block: \1 ----$", re.M | re.S)


def main(source: str, names: list[str]) -> None:
    blocks = dict(BLOCK.findall(open(os.path.join(ROOT, source)).read()))
    unknown = set(names) - set(blocks)
    if unknown:
        raise SystemExit(f"error: {source} has no block {sorted(unknown)}; it has {sorted(blocks)}")
    wanted = {n: blocks[n] for n in (names or blocks)}
    for path in sorted(glob.glob(os.path.join(ROOT, "*.py"))):
        if os.path.samefile(path, os.path.join(ROOT, source)):
            continue
        text = open(path).read()
        replace = lambda m: (f"# ---- block: {m[1]} ----\n{wanted[m[1]]}# ---- end block: {m[1]} ----"  # noqa: E731
                             if m[1] in wanted else m[0])
        new = BLOCK.sub(replace, text)
        if new != text:
            with open(path, "w") as f:
                f.write(new)
            print(f"updated {os.path.basename(path)}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python tests/sync_blocks.py SOURCE_FILE [BLOCK ...]")
    main(sys.argv[1], sys.argv[2:])
