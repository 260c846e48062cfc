//! Fake clouds for tests.
