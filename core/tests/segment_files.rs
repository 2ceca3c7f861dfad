//! The `.log` files the partition log writes are valid Kafka logs: read straight off
//! disk by an independent decoder (written from Kafka's documented format, sharing no
//! code with the core), every CRC checks, offsets run contiguously from each segment's
//! base (the name of the file), and the records are the ones produced.
#![cfg(feature = "std")]

mod common;
mod util;

use std::sync::Arc;

use common::kafka_decoder::{check_contiguous, decode_kafka_batches, decode_kafka_log};
use eddy_core::batch::{BatchBuilder, BatchOptions, Compression, RecordHeader};
use eddy_core::layout::{self, FileKind, FileState, SegmentFile};
use eddy_core::log::PartitionLog;
use eddy_core::storage::{FsStorage, Storage};

#[test]
fn segment_files_are_kafka_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sensors-0");
    let st: Arc<dyn Storage> = Arc::new(FsStorage);
    let cfg = util::config(&[("segment.bytes", "6000"), ("retention.ms", "-1")]);
    let mut log = PartitionLog::open(st, &dir, cfg, 0).unwrap();
    let mut produced = Vec::new();
    let codecs = [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd,
        Compression::Gzip,
    ];
    for i in 0..120u32 {
        let mut b = BatchBuilder::new(BatchOptions {
            compression: codecs[i as usize % codecs.len()],
            ..BatchOptions::default()
        });
        for j in 0..(1 + i % 7) {
            let key = format!("device-{}", j % 3);
            let value = format!("{{\"reading\":{i},\"j\":{j}}}");
            let ts = 1_700_000_000_000 + (i * 10 + j) as i64;
            let headers = [
                RecordHeader::new("source", Some(b"gw-1")),
                RecordHeader::new("null", None),
            ];
            let value_opt = if j == 5 { None } else { Some(value.as_bytes()) };
            b.push(ts, Some(key.as_bytes()), value_opt, &headers)
                .unwrap();
            produced.push((ts, key.into_bytes(), value_opt.map(<[u8]>::to_vec)));
        }
        log.append(&mut b.build().unwrap(), 7, 0).unwrap();
    }
    log.close(0).unwrap();

    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut all = Vec::new();
    let mut segments = 0;
    for name in names {
        let Some(FileKind::Segment {
            base,
            file: SegmentFile::Log,
            state: FileState::Live,
        }) = layout::parse(&name)
        else {
            continue;
        };
        segments += 1;
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        let entries = decode_kafka_log(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_contiguous(&entries).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            entries.first().map(|e| e.0),
            Some(base),
            "{name} starts at its base offset"
        );
        for b in decode_kafka_batches(&bytes).unwrap() {
            assert_eq!(b.partition_leader_epoch, 7, "the leader epoch is stamped");
            assert_eq!(b.magic, 2);
        }
        all.extend(entries);
    }
    assert!(segments > 3, "{segments} segments");
    check_contiguous(&all).unwrap();
    assert_eq!(all.first().map(|e| e.0), Some(0), "offsets start at 0");
    assert_eq!(all.len(), produced.len());
    for (got, want) in all.iter().zip(&produced) {
        assert_eq!(got.1, want.0, "timestamp at offset {}", got.0);
        assert_eq!(got.2.as_deref(), Some(want.1.as_slice()));
        assert_eq!(got.3, want.2);
        assert_eq!(
            got.4,
            vec![
                ("source".to_string(), Some(b"gw-1".to_vec())),
                ("null".to_string(), None)
            ]
        );
    }
}
