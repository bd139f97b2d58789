//! Konvert's store (see issue 3). Placeholder crate root while the store is built.
#![forbid(unsafe_code)]
