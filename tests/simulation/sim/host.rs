//! The host and the service.
