//! monitor-agent
