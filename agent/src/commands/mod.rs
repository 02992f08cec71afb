//! Commands pushed by the server (in progress).
