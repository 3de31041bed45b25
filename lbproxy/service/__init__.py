"""
The running process: listeners, reload on SIGHUP, drain on stop, and the
checks run before anything starts or changes.
"""
