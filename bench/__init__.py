"""The capacity benchmark (issue 3): `python -m bench --help`."""
