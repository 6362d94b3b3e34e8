//! Slack notifier (to be written).
