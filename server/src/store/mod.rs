//! The embedded store (in progress).
