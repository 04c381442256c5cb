"""Test-wide settings: no compile cache, unless a test turns it on in a directory of its own,
so a test always exercises the compiler it names (a monkeypatched pass, a broken schedule)."""
import os

os.environ["DNNC_CACHE"] = "0"
