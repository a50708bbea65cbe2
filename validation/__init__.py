"""Cross-checks of fast paths and peer libraries against the reference; bit-level reports."""
