//! What a parked goroutine's wait reason means: the one classifier the snapshot, the leak proof,
//! contention accounting, the sampler and the probes' decoders share. It works on the runtime's
//! own texts (`g.waitreason` indexes `runtime.waitReasonStrings`), so numbering changes between
//! Go releases never matter.

use serde::Serialize;

use crate::model::{ObjectKind, Op};

/// A wait that can end only when another goroutine acts on the object: the waits Go's block
/// profile counts, and the only ones the leak proof can judge. Other parks (sleep, IO wait, GC,
/// runtime-internal waits, nil-channel operations that never end) are not contention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    Mutex,
    RwmutexRead,
    RwmutexWrite,
    Waitgroup,
    Cond,
    Semaphore,
    ChanRecv,
    ChanSend,
    Select,
}

impl WaitKind {
    pub const ALL: [WaitKind; 9] = [
        WaitKind::Mutex,
        WaitKind::RwmutexRead,
        WaitKind::RwmutexWrite,
        WaitKind::Waitgroup,
        WaitKind::Cond,
        WaitKind::Semaphore,
        WaitKind::ChanRecv,
        WaitKind::ChanSend,
        WaitKind::Select,
    ];

    /// The kind of a wait reason text, None when it is not contention.
    pub fn from_reason(reason: &str) -> Option<WaitKind> {
        Some(match reason {
            "sync.Mutex.Lock" => WaitKind::Mutex,
            "sync.RWMutex.RLock" => WaitKind::RwmutexRead,
            "sync.RWMutex.Lock" => WaitKind::RwmutexWrite,
            "sync.WaitGroup.Wait" => WaitKind::Waitgroup,
            "sync.Cond.Wait" => WaitKind::Cond,
            "semacquire" => WaitKind::Semaphore,
            "chan receive" => WaitKind::ChanRecv,
            "chan send" => WaitKind::ChanSend,
            "select" => WaitKind::Select,
            _ => return None,
        })
    }

    /// [`WaitKind::from_reason`], telling a WaitGroup wait apart where the runtime does not:
    /// before Go 1.24 a goroutine in `(*sync.WaitGroup).Wait` parks as plain "semacquire" (1.24
    /// added "sync.WaitGroup.Wait"); `in_wait_group` says whether its frames pass through it.
    pub fn of(reason: &str, in_wait_group: bool) -> Option<WaitKind> {
        match WaitKind::from_reason(reason)? {
            WaitKind::Semaphore if in_wait_group => Some(WaitKind::Waitgroup),
            kind => Some(kind),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WaitKind::Mutex => "mutex",
            WaitKind::RwmutexRead => "rwmutex_read",
            WaitKind::RwmutexWrite => "rwmutex_write",
            WaitKind::Waitgroup => "waitgroup",
            WaitKind::Cond => "cond",
            WaitKind::Semaphore => "semaphore",
            WaitKind::ChanRecv => "chan_recv",
            WaitKind::ChanSend => "chan_send",
            WaitKind::Select => "select",
        }
    }

    /// The goroutine sleeps on a runtime semaphore (Mutex, RWMutex, WaitGroup, plain
    /// semaphores): it went through semacquire1, whose caller names the object and the site.
    pub fn on_semaphore(self) -> bool {
        matches!(
            self,
            WaitKind::Mutex
                | WaitKind::RwmutexRead
                | WaitKind::RwmutexWrite
                | WaitKind::Waitgroup
                | WaitKind::Semaphore
        )
    }

    /// Waits on a sync primitive (semaphores and a Cond's notify list): the object is found
    /// through the semaphore the goroutine sleeps on.
    pub fn is_sync(self) -> bool {
        self.on_semaphore() || self == WaitKind::Cond
    }

    /// What the goroutine does to its channels, for the channel kinds.
    pub fn channel_op(self) -> Option<Op> {
        match self {
            WaitKind::ChanSend => Some(Op::Send),
            WaitKind::ChanRecv => Some(Op::Recv),
            WaitKind::Select => Some(Op::Select),
            _ => None,
        }
    }

    /// A lock: the wait ends when a holder releases it (Go's mutex profile charges these).
    pub fn is_lock(self) -> bool {
        matches!(
            self,
            WaitKind::Mutex | WaitKind::RwmutexRead | WaitKind::RwmutexWrite
        )
    }
}

/// Waits nothing can ever end: an operation on a nil channel, `select {}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forever {
    NilChannel,
    SelectNoCases,
}

impl Forever {
    pub fn from_reason(reason: &str) -> Option<Forever> {
        match reason {
            "chan send (nil chan)" | "chan receive (nil chan)" => Some(Forever::NilChannel),
            "select (no cases)" => Some(Forever::SelectNoCases),
            _ => None,
        }
    }
}

/// What a sync wait blocks on: the object's kind, its address and the operation, from the wait
/// reason (and, where the reason is generic, the functions on the stack) and the semaphore or
/// notify-list address the goroutine sleeps on.
///
/// Positions of the semaphore words inside the sync types (unchanged 1.18–1.27; sync.Mutex
/// wraps internal/sync.Mutex at offset 0 since 1.24): Mutex{state int32; sema uint32},
/// RWMutex{w Mutex; writerSem; readerSem; …}, WaitGroup{noCopy; state uint64; sema uint32},
/// Cond{noCopy; L Locker; notify notifyList; …}.
pub fn sync_object(
    reason: &str,
    stack_functions: &[&str],
    sema: u64,
) -> Option<(ObjectKind, u64, Op)> {
    let in_stack = |name: &str| stack_functions.contains(&name);
    match reason {
        // RWMutex.Lock first takes its embedded writer Mutex, which sits at the RWMutex's
        // address: the call site tells the two apart.
        "sync.Mutex.Lock" if in_stack("sync.(*RWMutex).Lock") => {
            Some((ObjectKind::RwMutex, sema.checked_sub(4)?, Op::Lock))
        }
        "sync.Mutex.Lock" => Some((ObjectKind::Mutex, sema.checked_sub(4)?, Op::Lock)),
        "sync.RWMutex.RLock" => Some((
            ObjectKind::RwMutex,
            sema.checked_sub(RWMUTEX_READER_SEM)?,
            Op::RLock,
        )),
        "sync.RWMutex.Lock" => Some((ObjectKind::RwMutex, sema.checked_sub(8)?, Op::Lock)),
        "sync.WaitGroup.Wait" => Some((ObjectKind::WaitGroup, sema.checked_sub(8)?, Op::Wait)),
        "sync.Cond.Wait" => Some((ObjectKind::Cond, sema.checked_sub(16)?, Op::Wait)),
        "semacquire" if in_stack(WAIT_GROUP_WAIT) => {
            Some((ObjectKind::WaitGroup, sema.checked_sub(8)?, Op::Wait))
        }
        "semacquire" => Some((ObjectKind::Sema, sema, Op::Acquire)),
        _ => None,
    }
}

/// Offset of `readerSem` in sync.RWMutex {w Mutex; writerSem, readerSem uint32; ...}: the same
/// in every supported release (verified 1.18–1.27). A reader's semaphore minus this is the
/// RWMutex the user declared.
pub const RWMUTEX_READER_SEM: u64 = 12;

/// The function a WaitGroup waiter's stack passes through (see [`WaitKind::of`]).
pub const WAIT_GROUP_WAIT: &str = "sync.(*WaitGroup).Wait";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_blocking_reason_maps_to_a_kind() {
        for (r, k) in [
            ("sync.Mutex.Lock", WaitKind::Mutex),
            ("sync.RWMutex.RLock", WaitKind::RwmutexRead),
            ("sync.RWMutex.Lock", WaitKind::RwmutexWrite),
            ("sync.WaitGroup.Wait", WaitKind::Waitgroup),
            ("sync.Cond.Wait", WaitKind::Cond),
            ("semacquire", WaitKind::Semaphore),
            ("chan receive", WaitKind::ChanRecv),
            ("chan send", WaitKind::ChanSend),
            ("select", WaitKind::Select),
        ] {
            assert_eq!(WaitKind::from_reason(r), Some(k));
            assert!(WaitKind::ALL.contains(&k));
        }
        for r in [
            "sleep",
            "IO wait",
            "chan receive (nil chan)",
            "select (no cases)",
        ] {
            assert_eq!(WaitKind::from_reason(r), None, "{r}");
        }
        assert_eq!(
            Forever::from_reason("chan send (nil chan)"),
            Some(Forever::NilChannel)
        );
        assert_eq!(
            Forever::from_reason("select (no cases)"),
            Some(Forever::SelectNoCases)
        );
        assert_eq!(Forever::from_reason("select"), None);
    }

    #[test]
    fn kinds_know_their_objects() {
        assert_eq!(WaitKind::Select.channel_op(), Some(Op::Select));
        assert_eq!(WaitKind::Mutex.channel_op(), None);
        assert!(WaitKind::Cond.is_sync() && !WaitKind::Cond.on_semaphore());
        assert!(WaitKind::Waitgroup.on_semaphore() && !WaitKind::Waitgroup.is_lock());
        assert!(!WaitKind::ChanSend.is_sync());
        assert_eq!(WaitKind::of("semacquire", true), Some(WaitKind::Waitgroup));
        assert_eq!(WaitKind::of("semacquire", false), Some(WaitKind::Semaphore));
        assert_eq!(WaitKind::of("chan send", true), Some(WaitKind::ChanSend));
        assert_eq!(WaitKind::of("sleep", true), None);
    }

    #[test]
    fn sync_waits_map_semaphores_to_their_objects() {
        assert_eq!(
            sync_object("sync.Mutex.Lock", &[], 0xc000010004),
            Some((ObjectKind::Mutex, 0xc000010000, Op::Lock))
        );
        assert_eq!(
            sync_object("sync.Mutex.Lock", &["sync.(*RWMutex).Lock"], 0xc000010004),
            Some((ObjectKind::RwMutex, 0xc000010000, Op::Lock))
        );
        assert_eq!(
            sync_object("sync.RWMutex.RLock", &[], 0xc00001000c),
            Some((ObjectKind::RwMutex, 0xc000010000, Op::RLock))
        );
        assert_eq!(
            sync_object(
                "semacquire",
                &["runtime.semacquire1", "sync.(*WaitGroup).Wait"],
                0x1008
            ),
            Some((ObjectKind::WaitGroup, 0x1000, Op::Wait))
        );
        assert_eq!(
            sync_object("semacquire", &["main.f"], 0x1008),
            Some((ObjectKind::Sema, 0x1008, Op::Acquire))
        );
        assert_eq!(sync_object("chan send", &[], 0x1008), None);
        assert_eq!(sync_object("sync.Mutex.Lock", &[], 2), None);
    }
}
