//! End-to-end tests live in `tests/tests/`; they run the real `konvertctl` and `konvertd` binaries.
#![forbid(unsafe_code)]
