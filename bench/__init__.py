"""`make bench`: the welcome-mail service measured against the naive way.

Not part of the app or of `make test`. `python -m bench --help` lists options.
"""
