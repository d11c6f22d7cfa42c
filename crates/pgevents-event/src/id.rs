//! Event ids: UUIDv7-shaped, derived from the log position so they cost writers nothing.
//!
//! Layout (RFC 9562 version 7): 48 bits of Unix milliseconds from the capture time, the
//! version nibble `7`, 12 bits of a per-installation random salt, the variant bits `10`, and
//! the low 62 bits of the event's log sequence number. The id is therefore unique within an
//! installation (the sequence is), time-ordered, stable across retries and redeliveries, and
//! leads straight back to the event ([`seq_from_id`]) without an index on ids.

use chrono::{DateTime, Utc};
use uuid::Uuid;

const SEQ_BITS: u32 = 62;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// The id of the event at log position `seq`, captured at `created_at`.
pub fn event_id(created_at: DateTime<Utc>, salt: u16, seq: i64) -> Uuid {
    let millis = (created_at.timestamp_millis().max(0) as u64) & 0xFFFF_FFFF_FFFF;
    let high = (millis << 16) | 0x7000 | u64::from(salt & 0x0FFF);
    let low = (0b10 << SEQ_BITS) | (seq as u64 & SEQ_MASK);
    Uuid::from_u64_pair(high, low)
}

/// The log position encoded in an event id, or `None` for a UUID that is not an event id.
pub fn seq_from_id(id: Uuid) -> Option<i64> {
    let (high, low) = id.as_u64_pair();
    let is_v7 = (high >> 12) & 0xF == 7 && low >> SEQ_BITS == 0b10;
    is_v7.then_some((low & SEQ_MASK) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_look_like_uuid_v7() {
        let t = DateTime::from_timestamp_millis(1_732_443_300_123).unwrap_or_default();
        let id = event_id(t, 0xABC, 9_007_199_254_740_993);
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(seq_from_id(id), Some(9_007_199_254_740_993));
        assert!(id
            .simple()
            .to_string()
            .starts_with(&format!("{:012x}7abc", 1_732_443_300_123u64)));
        assert_ne!(id, event_id(t, 0xABC, 9_007_199_254_740_994));
        assert_eq!(seq_from_id(Uuid::new_v4()), None);
    }
}
