//! Atomic multi-key writes without `sled::Batch`.
//!
//! sled 0.34.7's `apply_batch` switches the whole process to a global
//! reader-writer lock (every later sled operation takes it, every batch waits
//! for all readers) and forces its I/O buffer out for each batch; under many
//! concurrent writers that costs more than the writes themselves. So the store
//! writes a group of changes as one *intent record* under `W || seq` (a single
//! sled insert, atomic by itself), then applies the changes one by one, then
//! removes the intent record: sled recovers a prefix, so if the removal is
//! recovered, every change before it is too.
//! At open, intent records still present are applied again (in order; every
//! change is an idempotent put or delete of a fixed value) and removed;
//! those numbered below the last put group's marker are only removed (they
//! were fully applied before the marker was written, and sled recovers a
//! prefix). Puts without a case do not use intent records (`Store::apply_puts`).

use crate::error::{Error, Result};

pub(crate) const P_INTENT: u8 = b'W';

/// One change: set a key to a value, or remove it (`None`).
pub(crate) type Op = (Vec<u8>, Option<Vec<u8>>);

/// A group of changes to the main tree, applied atomically.
#[derive(Default, Debug)]
pub(crate) struct Batch {
    pub(crate) ops: Vec<Op>,
}

impl Batch {
    /// Set `key` to `value`.
    pub(crate) fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops
            .push((key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
    }
    /// Remove `key`.
    pub(crate) fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push((key.as_ref().to_vec(), None));
    }
}

pub(crate) fn intent_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = P_INTENT;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// `[klen u32][key][0 | 1 vlen u32 value]...`
pub(crate) fn encode(ops: &[Op]) -> Vec<u8> {
    let size: usize = ops
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, |v| v.len()))
        .sum();
    let mut out = Vec::with_capacity(size);
    for (k, v) in ops {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        match v {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

/// Inverse of [`encode`]; a malformed record is `Error::Corrupt`.
pub(crate) fn decode(mut b: &[u8]) -> Result<Vec<Op>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        if b.len() < n {
            return Err(Error::corrupt("intent record"));
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn len(b: &mut &[u8]) -> Result<usize> {
        let a: [u8; 4] = take(b, 4)?
            .try_into()
            .map_err(|_| Error::corrupt("intent record"))?;
        Ok(u32::from_be_bytes(a) as usize)
    }
    let mut ops = Vec::new();
    while !b.is_empty() {
        let kl = len(&mut b)?;
        let k = take(&mut b, kl)?.to_vec();
        let v = match take(&mut b, 1)?[0] {
            0 => None,
            1 => {
                let vl = len(&mut b)?;
                Some(take(&mut b, vl)?.to_vec())
            }
            _ => return Err(Error::corrupt("intent record")),
        };
        ops.push((k, v));
    }
    Ok(ops)
}

/// Apply `ops` to `tree` one by one.
pub(crate) fn apply_ops(tree: &sled::Tree, ops: Vec<Op>) -> Result<()> {
    for (k, v) in ops {
        match v {
            Some(v) => {
                tree.insert(k, v)?;
            }
            None => {
                tree.remove(k)?;
            }
        }
    }
    Ok(())
}
