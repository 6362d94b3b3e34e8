//! The Azure DevOps service-endpoint emulator (to be written).
