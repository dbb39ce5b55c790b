"""Make the repository root importable (`import dqn_moe_atari as dqn`) however pytest is run."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
