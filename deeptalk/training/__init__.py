"""The staged trainer's parts; `deeptalk.train` is its command line (`deeptalk-train`)."""
