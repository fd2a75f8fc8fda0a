"""The core every chapter stands on: loading, encoding, prompts, tokens and their positions (BOS = 0),
provenance, records, the demo world."""
