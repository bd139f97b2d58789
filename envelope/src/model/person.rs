//! The Art. 6 person record. (Being written.)
