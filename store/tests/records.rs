#![allow(clippy::unwrap_used)]
//! The application's own records: atomic groups, durable after a sync,
//! kept apart from messages, checked at the boundary.

mod common;

use std::sync::Arc;

use common::*;
use konvert_store::*;

fn all(s: &Store, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    s.records(prefix).collect::<Result<Vec<_>>>().unwrap()
}

#[test]
fn records_are_applied_in_groups_listed_by_prefix_and_survive_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let s = open(tmp.path(), clock.clone());
        s.records_apply(vec![
            (b"c1".to_vec(), Some(b"one".to_vec())),
            (b"c2".to_vec(), Some(b"two".to_vec())),
            (b"l1".to_vec(), Some(b"loose".to_vec())),
        ])
        .unwrap();
        // A later group replaces and removes.
        s.records_apply(vec![
            (b"c1".to_vec(), Some(b"uno".to_vec())),
            (b"c2".to_vec(), None),
        ])
        .unwrap();
        // A message beside them is not a record.
        s.put_inbox(&msg(1, "kz.mvd", "request", b"payload")).unwrap();
        assert_eq!(all(&s, b"c"), vec![(b"c1".to_vec(), b"uno".to_vec())]);
        s.sync().unwrap();
    }
    let s = open(tmp.path(), clock);
    assert_eq!(
        all(&s, b""),
        vec![
            (b"c1".to_vec(), b"uno".to_vec()),
            (b"l1".to_vec(), b"loose".to_vec())
        ]
    );
    assert_eq!(s.inbox_list(None, 10).unwrap().len(), 1);
}

#[test]
fn bad_records_are_refused_whole_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Arc::new(ManualClock::new(T0)));
    let cases: Vec<(Vec<RecordOp>, &str)> = vec![
        (vec![(Vec::new(), Some(b"v".to_vec()))], "record key of 0 bytes"),
        (
            vec![(vec![b'k'; MAX_RECORD_KEY + 1], None)],
            "record key of 256 bytes",
        ),
        (
            vec![
                (b"ok".to_vec(), Some(b"v".to_vec())),
                (b"big".to_vec(), Some(vec![0; MAX_RECORD_VALUE + 1])),
            ],
            "at most 1048576",
        ),
        (
            (0..=MAX_RECORD_OPS)
                .map(|i| (i.to_be_bytes().to_vec(), None))
                .collect(),
            "record changes in one group",
        ),
    ];
    for (ops, why) in cases {
        let e = s.records_apply(ops).unwrap_err().to_string();
        assert!(e.contains(why), "{e:?} does not say {why:?}");
    }
    // Nothing of a refused group was applied.
    assert!(all(&s, b"").is_empty());
}

#[test]
fn async_sync_covers_records_applied_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    {
        let s = Arc::new(open(tmp.path(), clock.clone()));
        rt.block_on(async {
            let tasks: Vec<_> = (0..32u32)
                .map(|i| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        s.records_apply(vec![(i.to_be_bytes().to_vec(), Some(vec![i as u8; 100]))])
                            .unwrap();
                        s.sync_async().await.unwrap();
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        let st = s.stats();
        // Writers share syncs; never more syncs than writers.
        assert!(st.syncs <= 32, "{st:?}");
    }
    let s = open(tmp.path(), clock);
    assert_eq!(all(&s, b"").len(), 32);
}
