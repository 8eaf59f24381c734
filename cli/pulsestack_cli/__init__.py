"""The operator's command line: migrate, setup, devices, quarantine, run, simulate."""
