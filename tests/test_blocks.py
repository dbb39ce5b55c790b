"""The embedded blocks (`# ---- block: NAME ----` ... `# ---- end block: NAME ----`) are copies:
every agent file that has a block has it byte for byte the same."""

import collections
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN = re.compile(r"^# ---- block: (\S+) ----$", re.M)
END = re.compile(r"^# ---- end block: (\S+) ----$", re.M)
BLOCK = re.compile(r"^# ---- block: (\S+) ----\n(.*?)^# ---- end block: \1 ----$", re.M | re.S)
AGENTS = sorted(glob.glob(os.path.join(ROOT, "*.py")))
ATARI_BLOCKS = {"encoders", "tokenizers", "moe", "replay", "metrics", "logging", "checkpoint", "speed",
                "conv_kernels"}


def blocks_of(path):
    text = open(path).read()
    begins, ends = BEGIN.findall(text), END.findall(text)
    assert begins == ends, f"{os.path.basename(path)}: unbalanced block markers {begins} vs {ends}"
    found = dict(BLOCK.findall(text))
    assert len(found) == len(begins), f"{os.path.basename(path)}: a block name is used twice"
    return found


def test_dqn_has_every_atari_block():
    assert ATARI_BLOCKS <= set(blocks_of(os.path.join(ROOT, "dqn_moe_atari.py")))


def test_blocks_are_identical_across_agents():
    copies = collections.defaultdict(dict)
    for path in AGENTS:
        for name, body in blocks_of(path).items():
            copies[name][os.path.basename(path)] = body
    for name, versions in copies.items():
        reference = next(iter(versions.values()))
        different = [f for f, body in versions.items() if body != reference]
        assert not different, f"block '{name}' differs in {different} (tests/sync_blocks.py copies it from one file)"
