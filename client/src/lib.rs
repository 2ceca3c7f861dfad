//! Eddy's Rust client SDK: a [`Producer`] and a [`Consumer`] speaking Eddy's native
//! protocol ([`protocol`], `eddy/1` over QUIC) through a shared [`Client`].
//!
//! ```no_run
//! use eddy_client::{Client, ClientOptions, Producer, ProducerConfig, ProducerRecord};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::new(ClientOptions::new("127.0.0.1:7878"))?;
//! let producer = Producer::new(client.clone(), ProducerConfig::default())?;
//! let delivery = producer
//!     .send(ProducerRecord::new("sensors", "t=21.5").with_key("gateway-1"))
//!     .await?;
//! let metadata = delivery.await?;
//! println!("written at {}-{} offset {:?}", metadata.topic, metadata.partition, metadata.offset);
//! producer.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! Everything runs on smol: the client's QUIC endpoint, the producer's sender
//! and the consumer's fetches run on one shared client thread (or on a runtime
//! of the caller's, see [`runtime`]), so callers may drive the futures from any
//! executor, from `futures_lite::future::block_on` or from `smol::block_on`.
//!
//! Keyed records land on the partition Kafka's Java client would pick: see
//! [`partition_for_key`].

pub mod connection;
pub mod consumer;
pub mod group;
pub mod producer;
pub mod protocol;
mod routing;
pub mod runtime;

pub use connection::{
    Client, ClientCert, ClientError, ClientOptions, ListedOffset, Metadata, RequestStream,
    TopicDescription,
};
pub use consumer::{
    AutoOffsetReset, ConsumeError, Consumer, ConsumerConfig, ConsumerRecord, RebalanceListener,
};
pub use eddy_core::batch::{Compression, RecordHeader};
pub use group::{GroupDescription, JoinRequest, Joined};
pub use producer::{
    DeliveryFuture, ProduceError, Producer, ProducerConfig, ProducerRecord, ProducerRecordRef,
    RecordMetadata,
};
pub use protocol::{Acks, OffsetSpec};
pub use protocol::{CommitOffset, CommittedOffset};

/// Kafka's 32-bit murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`).
///
/// Returns the same signed value as the Java code, bit for bit: seed
/// `0x9747b28c`, 4-byte little-endian blocks, wrapping arithmetic.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java hashes with `int` arithmetic and `length` as an int: for inputs of
    // 2 GiB or more the seed mixing would differ, so those are out of range.
    assert!(
        data.len() <= i32::MAX as usize,
        "murmur2 input over i32::MAX bytes"
    );
    let mut h = SEED ^ data.len() as u32;

    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    let tail = blocks.remainder();
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a record with `key`:
/// `toPositive(murmur2(key)) % partitions`, where `toPositive` clears the
/// sign bit (`x & 0x7fffffff`, not `abs`).
///
/// # Panics
///
/// If `partitions` is 0: a topic always has at least one partition, so a
/// zero here is a bug in the caller's metadata handling.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) as u32 & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's `UtilsTest.testMurmur2`.
    const KAFKA_VECTORS: [(&[u8], i32); 6] = [
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ];

    /// librdkafka's `unittest_murmur2` (`java_murmur2_results` in
    /// `rdmurmur2.c`): Java's results, as unsigned bit patterns. They add
    /// tails of one byte and the empty input.
    const LIBRDKAFKA_VECTORS: [(&[u8], u32); 11] = [
        (b"kafka", 0xd067_cf64),
        (b"giberish123456789", 0x8f55_2b0c),
        (b"1234", 0x9fc9_7b14),
        (b"234", 0xe7c0_09ca),
        (b"34", 0x8739_30da),
        (b"4", 0x5a4b_5ca1),
        (b"PreAmbleWillBeRemoved,ThePrePartThatIs", 0x7842_4f1c),
        (b"reAmbleWillBeRemoved,ThePrePartThatIs", 0x4a62_b377),
        (b"eAmbleWillBeRemoved,ThePrePartThatIs", 0xe0e4_e09e),
        (b"AmbleWillBeRemoved,ThePrePartThatIs", 0x62b8_b43f),
        (b"", 0x106e_08d9),
    ];

    #[test]
    fn murmur2_matches_librdkafka() {
        for (input, expected) in LIBRDKAFKA_VECTORS {
            assert_eq!(
                murmur2(input) as u32,
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn murmur2_matches_kafka() {
        for (input, expected) in KAFKA_VECTORS {
            assert_eq!(
                murmur2(input),
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn vectors_cover_every_tail_length() {
        // The tail handling has four cases; the vectors must exercise each.
        let mut seen = [false; 4];
        let kafka = KAFKA_VECTORS.iter().map(|(input, _)| input);
        let librdkafka = LIBRDKAFKA_VECTORS.iter().map(|(input, _)| input);
        for input in kafka.chain(librdkafka) {
            seen[input.len() % 4] = true;
        }
        assert_eq!(seen, [true; 4]);
    }

    #[test]
    fn partition_clears_the_sign_bit_instead_of_negating() {
        // murmur2("foobar") is negative: -790332482 & 0x7fffffff = 1357151166,
        // while abs() would give 790332482 (partition 32 of 50, not 16).
        assert_eq!(partition_for_key(b"foobar", 50), 16);
        // -973932308 & 0x7fffffff = 1173551340.
        assert_eq!(partition_for_key(b"21", 7), 3);
        // Positive hash: 479470107 % 10.
        assert_eq!(partition_for_key(b"abc", 10), 7);
    }

    #[test]
    fn one_partition_takes_every_key() {
        for (input, _) in KAFKA_VECTORS {
            assert_eq!(partition_for_key(input, 1), 0);
        }
    }

    #[test]
    #[should_panic(expected = "at least one partition")]
    fn zero_partitions_is_a_bug() {
        partition_for_key(b"key", 0);
    }
}
