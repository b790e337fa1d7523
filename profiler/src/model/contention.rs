//! Contention in the shared picture: where a wait is charged (its site), and what the probes'
//! event stream tells contention accounting (observations). The probes build observations, the
//! memory sampler builds samples (`goruntime::sampler`); analysis only reads both.

use std::sync::Arc;

use crate::model::Location;
use crate::model::waits::WaitKind;

/// Packages whose frames are the blocking machinery, not the user's code: a wait's site is the
/// first frame outside them, as `go tool pprof` users read Go's own block profile.
pub fn is_machinery(function: &str) -> bool {
    function.starts_with("runtime.")
        || function.starts_with("internal/")
        || function.starts_with("sync.")
        || function.starts_with("sync/atomic.")
}

/// The placeholder site of a wait whose user frame was not captured.
pub const UNKNOWN_SITE: &str = "(unknown site)";
/// The waker "site" of a goroutine readied by the scheduler itself (a timer, the netpoller).
pub const SCHEDULER_SITE: &str = "(scheduler: timer or netpoll)";
/// The waker site of a channel wait when no channel probe saw the waker's operation.
pub const UNKNOWN_CHANNEL_WAKER: &str = "(channel operation: the channels probe group names it)";

/// A site key: the first frame of `stack`, or a named placeholder when none was captured.
pub fn site_of(stack: &[Location], fallback: &str) -> Location {
    stack.first().cloned().unwrap_or_else(|| Location {
        function: fallback.into(),
        file: Default::default(),
        line: 0,
    })
}

/// `X.deferwrapN` is the compiler's wrapper for a `defer` in X: it runs as X returns, and Go's
/// own tracebacks (so its profiles) hide it. Its frame is X's site (the defer statement's line)
/// unless X's own frame follows, which then stands alone.
pub fn unwrap_deferwraps(stack: Vec<Location>) -> Vec<Location> {
    fn parent(function: &str) -> Option<&str> {
        let (parent, tail) = function.rsplit_once(".deferwrap")?;
        (!tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit())).then_some(parent)
    }
    let mut out: Vec<Location> = Vec::with_capacity(stack.len());
    let mut frames = stack.into_iter().peekable();
    while let Some(mut f) = frames.next() {
        if let Some(p) = parent(&f.function).map(str::to_string) {
            if frames.peek().is_some_and(|next| next.function == p) {
                continue;
            }
            f.function = p.into();
        }
        out.push(f);
    }
    out
}

/// What a goroutine announced it is about to block on (slow-path entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Mutex lockSlow (object = the mutex).
    Mutex,
    /// RWMutex.Lock (object = the RWMutex).
    RwWrite,
    /// A reader blocks (object = the RWMutex).
    RwRead,
    /// semacquire1 (object = the semaphore).
    Sema,
}

/// What one probe event says, as far as contention accounting cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// gopark; `kind` is None for a park that is not contention (sleep, IO wait, …); object =
    /// the channel for channel parks.
    Park {
        kind: Option<WaitKind>,
        object: String,
    },
    /// runtime.ready: the observed goroutine (the waker, 0 = scheduler) readied `woken`.
    Wake {
        woken: u64,
    },
    Intent {
        intent: Intent,
        object: String,
    },
    /// The goroutine released something a waiter may be waiting for (unlock, semrelease,
    /// channel operation, close).
    Release {
        object: String,
    },
    Other,
}

/// One observation from the event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Obs {
    pub ts_ns: u64,
    pub goid: u64,
    pub op: Observed,
    /// From the first user frame outward; empty when the event captured no user frame.
    /// Shared: every event with the same return addresses has the same stack.
    pub stack: Arc<[Location]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(f: &str, line: u32) -> Location {
        Location {
            function: f.into(),
            file: "/src/app/main.go".into(),
            line,
        }
    }

    #[test]
    fn machinery_frames_are_skipped_for_the_user_site() {
        assert!(is_machinery("runtime.chanrecv1"));
        assert!(is_machinery("internal/sync.(*Mutex).lockSlow"));
        assert!(is_machinery("sync.(*Mutex).Lock"));
        assert!(!is_machinery("main.worker"));
        assert!(!is_machinery("net/http.(*conn).serve"));
        assert_eq!(site_of(&[], UNKNOWN_SITE).function, UNKNOWN_SITE);
        assert_eq!(site_of(&[frame("main.f", 3)], UNKNOWN_SITE).line, 3);
    }

    #[test]
    fn deferred_unlock_wrappers_are_their_functions_sites() {
        let stack = vec![
            frame("net/http.(*Transport).queueForIdleConn.deferwrap1", 10),
            frame("net/http.(*Transport).queueForIdleConn", 12),
            frame("net/http.(*Transport).getConn", 40),
        ];
        let names = |s: Vec<Location>| {
            s.into_iter()
                .map(|f| f.function.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(unwrap_deferwraps(stack)),
            vec![
                "net/http.(*Transport).queueForIdleConn",
                "net/http.(*Transport).getConn"
            ]
        );
        // Run by deferreturn: the wrapper's caller is out of the captured frames.
        let stack = vec![
            frame("net/http.(*Transport).tryPutIdleConn.deferwrap2", 20),
            frame("runtime.deferreturn", 1),
        ];
        assert_eq!(
            names(unwrap_deferwraps(stack)),
            vec![
                "net/http.(*Transport).tryPutIdleConn",
                "runtime.deferreturn"
            ]
        );
        let plain = vec![frame("main.deferwrapper", 1), frame("main.f.func1", 2)];
        assert_eq!(names(unwrap_deferwraps(plain.clone())), names(plain));
    }
}
