//! Parsers for the /proc files the agent reads (in progress).
