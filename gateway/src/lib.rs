//! Konvert gateway library: what `konvertd` and `konvertctl` share.
#![forbid(unsafe_code)]
