"""Unit tests of the service-graph processor."""
