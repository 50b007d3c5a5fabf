"""The jobs behind the command line (share, import, export, infer, train, bench, demo,
info, ...): each parses its arguments, calls the library below and prints.  Nothing below
this package imports it, and no job imports another (shared helpers: channel_args,
checks, launcher)."""
