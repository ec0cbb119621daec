"""Pure policy: no I/O, no clock (time is passed in)."""
