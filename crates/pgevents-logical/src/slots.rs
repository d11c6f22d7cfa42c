//! Replication slot health: how much WAL the slot holds back, and whether that threatens the
//! server's disk or the slot itself.
//!
//! A slot keeps every WAL segment from its `restart_lsn` on. While capture keeps up that is a
//! few megabytes; while it is stopped or slow, WAL piles up — without limit unless
//! `max_slot_wal_keep_size` is set, and with a limit the server invalidates the slot
//! (`wal_status = lost`) once it is passed, after which its changes are gone.

use tokio_postgres::GenericClient;

use crate::Error;

/// The state of a replication slot, from `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotHealth {
    /// The slot's name.
    pub slot: String,
    /// The process consuming it, if any.
    pub active_pid: Option<i32>,
    /// `reserved`, `extended`, `unreserved` or `lost` (see the PostgreSQL documentation of
    /// `pg_replication_slots`).
    pub wal_status: Option<String>,
    /// WAL the slot holds back from removal, in bytes.
    pub retained_bytes: Option<i64>,
    /// WAL written since the last change the capture confirmed, in bytes: the capture lag.
    pub lag_bytes: Option<i64>,
    /// WAL that can still be written before the slot is invalidated, in bytes (`None` when
    /// `max_slot_wal_keep_size` is unlimited).
    pub safe_wal_size: Option<i64>,
    /// The server's `max_slot_wal_keep_size` in megabytes; -1 means unlimited.
    pub max_slot_wal_keep_size_mb: i64,
}

impl SlotHealth {
    /// True when the server has invalidated the slot.
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }

    /// A warning to log when the slot threatens the disk or is about to be lost;
    /// `retained_warning` is the amount of held-back WAL worth a warning when no
    /// `max_slot_wal_keep_size` caps it.
    pub fn warning(&self, retained_warning: u64) -> Option<String> {
        let mb = |b: i64| b / (1024 * 1024);
        let retained = self.retained_bytes.unwrap_or(0);
        if self.wal_status.as_deref() == Some("unreserved") {
            return Some(format!(
                "replication slot {:?} holds {} MB of WAL, past max_slot_wal_keep_size ({} MB): the next checkpoint removes WAL it still needs and the slot will be lost; keep pgevents capture running and caught up, or raise max_slot_wal_keep_size",
                self.slot, mb(retained), self.max_slot_wal_keep_size_mb
            ));
        }
        if let Some(safe) = self.safe_wal_size {
            let limit = self.max_slot_wal_keep_size_mb.saturating_mul(1024 * 1024);
            if limit > 0 && safe < limit / 5 {
                return Some(format!(
                    "replication slot {:?} holds {} MB of WAL; only {} MB more can be written before max_slot_wal_keep_size ({} MB) invalidates it and uncaptured changes are lost: make sure pgevents capture is running and keeping up",
                    self.slot, mb(retained), mb(safe.max(0)), self.max_slot_wal_keep_size_mb
                ));
            }
        }
        if self.max_slot_wal_keep_size_mb < 0
            && u64::try_from(retained).unwrap_or(0) >= retained_warning
        {
            return Some(format!(
                "replication slot {:?} holds {} MB of WAL and max_slot_wal_keep_size is unlimited: WAL keeps growing until capture catches up and can fill the server's disk; make sure pgevents capture is running, and consider setting max_slot_wal_keep_size to cap it (a slot past the cap is lost)",
                self.slot, mb(retained)
            ));
        }
        None
    }
}

/// Reads the health of replication slot `slot`; `None` when it does not exist.
pub async fn slot_health(
    client: &impl GenericClient,
    slot: &str,
) -> Result<Option<SlotHealth>, Error> {
    let row = client
        .query_opt(
            "WITH here AS (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                       ELSE pg_current_wal_lsn() END AS lsn)
             SELECT s.active_pid, s.wal_status,
                    (here.lsn - s.restart_lsn)::int8,
                    (here.lsn - s.confirmed_flush_lsn)::int8,
                    s.safe_wal_size,
                    (SELECT setting::int8 FROM pg_settings WHERE name = 'max_slot_wal_keep_size')
               FROM pg_replication_slots s, here
              WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::query("reading the replication slot's state", e))?;
    Ok(row.map(|r| SlotHealth {
        slot: slot.into(),
        active_pid: r.get(0),
        wal_status: r.get(1),
        retained_bytes: r.get(2),
        lag_bytes: r.get(3),
        safe_wal_size: r.get(4),
        max_slot_wal_keep_size_mb: r.get(5),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(status: &str, retained_mb: i64, safe_mb: Option<i64>, max_mb: i64) -> SlotHealth {
        SlotHealth {
            slot: "s".into(),
            active_pid: None,
            wal_status: Some(status.into()),
            retained_bytes: Some(retained_mb << 20),
            lag_bytes: Some(0),
            safe_wal_size: safe_mb.map(|m| m << 20),
            max_slot_wal_keep_size_mb: max_mb,
        }
    }

    #[test]
    fn warns_before_the_disk_or_the_slot_is_in_danger() {
        let gib = 1 << 30;
        assert_eq!(health("reserved", 10, None, -1).warning(gib), None);
        let w = health("extended", 2048, None, -1)
            .warning(gib)
            .expect("warns");
        assert!(w.contains("unlimited"), "{w}");
        let w = health("reserved", 900, Some(100), 1000)
            .warning(gib)
            .expect("warns");
        assert!(w.contains("100 MB more"), "{w}");
        assert_eq!(health("reserved", 100, Some(900), 1000).warning(gib), None);
        let w = health("unreserved", 1100, Some(0), 1000)
            .warning(gib)
            .expect("warns");
        assert!(w.contains("will be lost"), "{w}");
        assert!(health("lost", 0, None, 1000).is_lost());
    }
}
