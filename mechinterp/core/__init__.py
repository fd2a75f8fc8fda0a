"""The core every chapter stands on: loading, encoding, prompts, tokens, provenance, records, the demo world."""
