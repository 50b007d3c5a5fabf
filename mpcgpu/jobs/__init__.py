"""The jobs behind the command line (infer, bench, demo, info): user journeys that tie
data, protocols and networks together.  Nothing below this package imports it."""
