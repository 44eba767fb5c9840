"""The fault soak: real processes under load, random faults, then a checker.

`make soak` runs `python -m tests.soak`; docs/SOAK.md says what it does and
holds the last report. tests/soak/test_soak.py runs a short one in the suite.
"""
