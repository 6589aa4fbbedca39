"""Tests import the top-level modules the way the stage scripts do."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the hub in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = ROOT.parent / "shared" / "data"
