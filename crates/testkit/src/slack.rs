//! The Slack webhook sink (to be written).
