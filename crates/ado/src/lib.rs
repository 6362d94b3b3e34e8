//! Azure DevOps service-endpoint client (to be written).
