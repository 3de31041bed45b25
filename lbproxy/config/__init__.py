"""
Configuration: the one option table, the frozen model, the command line
and the TOML file.
"""
