//! monitor-server
