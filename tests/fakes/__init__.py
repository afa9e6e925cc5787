"""Fakes for hardware boundaries only (the NPU runtime); everything above them runs for real."""
